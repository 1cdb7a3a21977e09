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
    let a = ADJECTIVES[(b[0] as usize * 31 + b[1] as usize) % ADJECTIVES.len()];
    let n = NOUNS[(b[2] as usize * 31 + b[3] as usize) % NOUNS.len()];
    format!("{a}_{n}_{}", &id[..4])
}

/// Checks a user-chosen name against docker's pattern `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
