//! Random run names in MLflow's `adjective-noun-number` style, for runs
//! created without one.

const ADJECTIVES: &[&str] = &[
    "amazing", "bold", "brave", "bright", "calm", "clever", "crisp", "daring", "eager", "fast",
    "fearless", "gentle", "glowing", "grand", "happy", "honest", "keen", "kind", "lively", "lucky",
    "merry", "mighty", "nimble", "noble", "polite", "proud", "quick", "quiet", "rare", "shy",
    "silent", "smiling", "steady", "sunny", "swift", "tidy", "upbeat", "vivid", "warm", "wise",
];

const NOUNS: &[&str] = &[
    "ant", "bass", "bear", "bee", "cat", "colt", "crab", "crane", "deer", "doe", "dove", "eagle",
    "eel", "finch", "fox", "frog", "goat", "hawk", "hen", "heron", "horse", "jay", "kite", "lamb",
    "lark", "lion", "lynx", "mink", "mole", "moth", "newt", "owl", "ox", "panda", "quail", "ram",
    "robin", "seal", "snail", "swan", "toad", "trout", "whale", "wolf", "wren", "yak",
];

/// A name such as `swift-heron-417`. A UUID v4 carries enough randomness.
pub fn random_run_name() -> String {
    let entropy = uuid::Uuid::new_v4().as_u128();
    let adjective = ADJECTIVES[(entropy % ADJECTIVES.len() as u128) as usize];
    let noun = NOUNS[((entropy >> 32) % NOUNS.len() as u128) as usize];
    let number = (entropy >> 64) % 1000;
    format!("{adjective}-{noun}-{number}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_three_parts() {
        let name = random_run_name();
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert!(parts[2].parse::<u32>().unwrap() < 1000);
        crate::model::validation::validate_tag_value("mlflow.runName", &name).unwrap();
    }
}
