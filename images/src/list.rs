//! `vessel images`: one row per reference, newest first, with docker's filters,
//! and totals that count shared layers once.

use std::collections::HashSet;
use std::str::FromStr;

use crate::error::{Result, StoreError};
use crate::image::Image;
use crate::reference::Reference;
use crate::store::Store;

/// A `--filter` of `vessel images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `label=KEY` or `label=KEY=VALUE`.
    Label(String, Option<String>),
    /// `reference=PATTERN` (glob over `repo` and `repo:tag`; `*` stops at `/`).
    Reference(String),
    /// `dangling=true|false`: images without (or with) a tag.
    Dangling(bool),
    /// `before=IMAGE`: created before that image.
    Before(String),
    /// `since=IMAGE`: created after that image.
    Since(String),
}

impl FromStr for Filter {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Filter> {
        let bad = |why: &str| StoreError::invalid(format!("filter {s:?}"), why);
        let (k, v) = s.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
        Ok(match k {
            "label" => match v.split_once('=') {
                Some((k, v)) => Filter::Label(k.into(), Some(v.into())),
                None => Filter::Label(v.into(), None),
            },
            "reference" => Filter::Reference(v.into()),
            "dangling" => match v {
                "true" | "1" => Filter::Dangling(true),
                "false" | "0" => Filter::Dangling(false),
                _ => return Err(bad("dangling takes true or false")),
            },
            "before" => Filter::Before(v.into()),
            "since" => Filter::Since(v.into()),
            _ => {
                return Err(bad(
                    "unknown filter; use label=, reference=, dangling=, before= or since=",
                ))
            }
        })
    }
}

/// One row of `vessel images`.
#[derive(Debug, Clone)]
pub struct Row {
    /// Repository, familiar form, or `<none>`.
    pub repository: String,
    /// Tag or `<none>`.
    pub tag: String,
    /// The repository's manifest digest, when known.
    pub digest: Option<String>,
    /// The image.
    pub image: Image,
}

/// What `vessel images` shows.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Rows, newest image first.
    pub rows: Vec<Row>,
    /// Distinct images listed.
    pub images: usize,
    /// Their total unpacked size, each distinct layer counted once.
    pub total_size: u64,
}

/// Shell-style glob: `*` any run without `/`, `?` one character other than `/`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && t[0] != '/' && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

/// Sort key: the config's created time, then when it entered the store.
fn age_key(i: &Image) -> (i64, i64) {
    (i.created.map(|c| c.timestamp()).unwrap_or(i.added), i.added)
}

impl Store {
    /// The rows `vessel images` shows for these filters.
    pub fn list(&self, filters: &[Filter]) -> Result<Listing> {
        let mut images = self.all_images()?;
        images.sort_by_key(|i| std::cmp::Reverse(age_key(i)));
        let mut before = None;
        let mut since = None;
        for f in filters {
            match f {
                Filter::Before(r) => before = Some(age_key(&self.image(r)?)),
                Filter::Since(r) => since = Some(age_key(&self.image(r)?)),
                _ => {}
            }
        }
        let mut rows = Vec::new();
        for img in images {
            if before.is_some_and(|b| age_key(&img) >= b)
                || since.is_some_and(|s| age_key(&img) <= s)
            {
                continue;
            }
            if !image_filters_match(&img, filters) {
                continue;
            }
            for row in rows_of(&img) {
                let ok = filters.iter().all(|f| match f {
                    Filter::Reference(p) => {
                        row.repository != "<none>"
                            && (glob_match(p, &row.repository)
                                || glob_match(p, &format!("{}:{}", row.repository, row.tag)))
                    }
                    _ => true,
                });
                if ok {
                    rows.push(row);
                }
            }
        }
        let mut seen_images = HashSet::new();
        let mut seen_layers = HashSet::new();
        let mut total_size = 0;
        for r in &rows {
            if seen_images.insert(r.image.id.clone()) {
                for l in &r.image.layers {
                    if seen_layers.insert(l.diff_id.clone()) {
                        total_size += l.diff_size;
                    }
                }
            }
        }
        Ok(Listing {
            images: seen_images.len(),
            rows,
            total_size,
        })
    }
}

fn image_filters_match(img: &Image, filters: &[Filter]) -> bool {
    filters.iter().all(|f| match f {
        Filter::Label(k, v) => {
            let labels = img
                .config
                .config()
                .as_ref()
                .and_then(|c| c.labels().clone());
            match (labels.as_ref().and_then(|l| l.get(k)), v) {
                (Some(_), None) => true,
                (Some(have), Some(want)) => have == want,
                (None, _) => false,
            }
        }
        Filter::Dangling(d) => img.references.is_empty() == *d,
        _ => true,
    })
}

fn rows_of(img: &Image) -> Vec<Row> {
    let digest_for = |repo: &str| {
        img.repo_digests.iter().find_map(|d| {
            let (r, dg) = d.split_once('@')?;
            (r == repo).then(|| dg.to_string())
        })
    };
    let mut rows = Vec::new();
    for r in &img.references {
        let (repo, tag) = match Reference::parse(r) {
            Ok(p) => (p.familiar_name(), p.tag().unwrap_or("<none>").to_string()),
            Err(_) => (r.clone(), "<none>".into()),
        };
        rows.push(Row {
            digest: digest_for(&repo),
            repository: repo,
            tag,
            image: img.clone(),
        });
    }
    if rows.is_empty() {
        for d in &img.repo_digests {
            if let Some((repo, dg)) = d.split_once('@') {
                rows.push(Row {
                    repository: repo.to_string(),
                    tag: "<none>".into(),
                    digest: Some(dg.to_string()),
                    image: img.clone(),
                });
            }
        }
    }
    if rows.is_empty() {
        rows.push(Row {
            repository: "<none>".into(),
            tag: "<none>".into(),
            digest: img.manifest_digest.clone(),
            image: img.clone(),
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("busy*", "busybox"));
        assert!(glob_match("*/*:latest", "vessel-test/busybox:latest"));
        assert!(!glob_match("*", "a/b"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "a/c"));
        assert!(!glob_match("busy", "busybox"));
    }

    #[test]
    fn filters_parse() {
        assert_eq!(
            "label=a=b".parse::<Filter>().unwrap(),
            Filter::Label("a".into(), Some("b".into()))
        );
        assert_eq!(
            "label=a".parse::<Filter>().unwrap(),
            Filter::Label("a".into(), None)
        );
        assert_eq!(
            "dangling=true".parse::<Filter>().unwrap(),
            Filter::Dangling(true)
        );
        assert!("dangling=maybe".parse::<Filter>().is_err());
        assert!("color=red".parse::<Filter>().is_err());
        assert!("nonsense".parse::<Filter>().is_err());
    }
}
