//! Container IDs (64 random hex digits) and generated names.

use std::io::Read;

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "deft", "eager", "fancy", "gentle", "happy", "jolly", "keen",
    "lucid", "merry", "nimble", "proud", "quiet", "rapid", "sunny", "tidy", "vivid", "witty",
];
const NOUNS: &[&str] = &[
    "otter", "falcon", "maple", "harbor", "comet", "badger", "cedar", "dolphin", "ember", "fjord",
    "glacier", "heron", "island", "lagoon", "meadow", "nebula", "orchid", "pebble", "quartz",
    "raven",
];

/// A fresh random container ID.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A readable name derived from the ID (`adjective_noun_ab12`); the suffix keeps
/// collisions rare.
pub fn generated_name(id: &str) -> String {
    let b = id.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0) as usize;
    let a = ADJECTIVES[(at(0) * 31 + at(1)) % ADJECTIVES.len()];
    let n = NOUNS[(at(2) * 31 + at(3)) % NOUNS.len()];
    let suffix: String = id.chars().take(4).collect();
    format!("{a}_{n}_{suffix}")
}

/// Checks a user-chosen name against docker's pattern `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let name = generated_name(&id);
        assert!(valid_name(&name) && name.ends_with(&id[..4]), "{name}");
        assert!(valid_name(&generated_name("")));
        assert!(valid_name("web-1.a_b") && !valid_name("-x") && !valid_name("a/b"));
    }
}
