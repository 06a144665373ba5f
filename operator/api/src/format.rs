//! The request formats of an input file: one definition for the BatchJob spec, the runner's
//! `--format` flag and the format the runner records in its job fingerprint.

use serde::{Deserialize, Serialize};

/// A request format, as a runner reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"custom_id", "method", "url", "body"}` lines (the OpenAI Batch API).
    OpenAi,
    /// `{"custom_id", "params"}` lines (Anthropic's Message Batches API; chat models only).
    Anthropic,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::OpenAi => "openai",
            Format::Anthropic => "anthropic",
        }
    }
}

/// A format, or `auto`: decided from the input's first request line (`params` → Anthropic,
/// `body` → OpenAI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum InputFormat {
    #[default]
    Auto,
    Openai,
    Anthropic,
}

impl InputFormat {
    /// The format asked for; `None` for `auto`.
    pub fn fixed(self) -> Option<Format> {
        match self {
            InputFormat::Auto => None,
            InputFormat::Openai => Some(Format::OpenAi),
            InputFormat::Anthropic => Some(Format::Anthropic),
        }
    }

    pub fn as_str(self) -> &'static str {
        self.fixed().map_or("auto", Format::as_str)
    }
}

impl std::fmt::Display for InputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [InputFormat::Auto, InputFormat::Openai, InputFormat::Anthropic]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format `{s}`: use auto, openai or anthropic"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_same_in_flags_in_specs_and_in_fingerprints() {
        for f in [InputFormat::Auto, InputFormat::Openai, InputFormat::Anthropic] {
            assert_eq!(f.as_str().parse::<InputFormat>(), Ok(f));
            assert_eq!(serde_json::to_value(f).expect("json"), f.as_str());
        }
        assert_eq!(serde_json::to_value(Format::OpenAi).expect("json"), "openai");
        assert_eq!(serde_json::to_value(Format::Anthropic).expect("json"), "anthropic");
        assert!("gemini".parse::<InputFormat>().expect_err("unknown").contains("auto, openai or anthropic"));
    }
}
