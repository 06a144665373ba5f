//! Which local binary stands in for which container image (`--image IMAGE=PATH`).

use std::path::{Path, PathBuf};

/// One `--image` mapping: a container image, without its tag, and the binary that plays it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMapping {
    pub image: String,
    pub binary: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid image mapping {0:?}: expected IMAGE=PATH, e.g. ghcr.io/barge-dev/barge-runner=/usr/bin/barge-runner"
)]
pub struct InvalidMapping(pub String);

impl std::str::FromStr for ImageMapping {
    type Err = InvalidMapping;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((image, binary)) if !image.is_empty() && !binary.is_empty() => {
                Ok(Self { image: image.to_string(), binary: PathBuf::from(binary) })
            }
            _ => Err(InvalidMapping(s.to_string())),
        }
    }
}

/// The node's "image store": every image it can run, as the binary that plays it.
#[derive(Clone, Debug, Default)]
pub struct Images {
    mappings: Vec<ImageMapping>,
}

impl Images {
    pub fn new(mappings: Vec<ImageMapping>) -> Self {
        Self { mappings }
    }

    pub fn mappings(&self) -> &[ImageMapping] {
        &self.mappings
    }

    /// The binary for a pod's `image`. A mapping matches the image with its tag or digest
    /// (`repo:tag`, `repo@sha256:…`), the image without them, or — when the mapping names no
    /// registry or path — just the image's last path component (`barge-runner` matches
    /// `ghcr.io/barge-dev/barge-runner:0.1.0`). The first exact match wins over a short one.
    pub fn binary_for(&self, image: &str) -> Option<&Path> {
        let repo = repository(image);
        let last = repo.rsplit('/').next().unwrap_or(repo);
        let exact = self.mappings.iter().find(|m| m.image == image || m.image == repo);
        let short = || self.mappings.iter().find(|m| !m.image.contains('/') && m.image == last);
        exact.or_else(short).map(|m| m.binary.as_path())
    }
}

/// `image` without its digest and tag: `ghcr.io:443/a/b:1.0@sha256:…` → `ghcr.io:443/a/b`.
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(repo, _digest)| repo);
    match image.rfind(':') {
        // A colon after the last slash starts a tag; before it, it belongs to a registry port.
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(specs: &[&str]) -> Images {
        Images::new(specs.iter().map(|s| s.parse().expect("valid mapping")).collect())
    }

    #[test]
    fn a_mapping_matches_the_image_whatever_its_tag() {
        let imgs = images(&["ghcr.io/barge-dev/barge-runner=/bin/runner"]);
        for image in [
            "ghcr.io/barge-dev/barge-runner",
            "ghcr.io/barge-dev/barge-runner:0.1.0",
            "ghcr.io/barge-dev/barge-runner@sha256:abcd",
            "ghcr.io/barge-dev/barge-runner:0.1.0@sha256:abcd",
        ] {
            assert_eq!(imgs.binary_for(image), Some(Path::new("/bin/runner")), "{image}");
        }
        assert_eq!(imgs.binary_for("ghcr.io/other/barge-runner:0.1.0"), None);
    }

    #[test]
    fn a_short_name_matches_the_last_path_component() {
        let imgs = images(&["barge-runner=/bin/runner", "busybox=/bin/busybox"]);
        assert_eq!(imgs.binary_for("ghcr.io/barge-dev/barge-runner:dev"), Some(Path::new("/bin/runner")));
        assert_eq!(imgs.binary_for("docker.io/library/busybox:1.37"), Some(Path::new("/bin/busybox")));
        assert_eq!(imgs.binary_for("ghcr.io/barge-dev/barge-runner-x"), None);
    }

    #[test]
    fn an_exact_mapping_wins_over_a_short_one() {
        let imgs = images(&["runner=/bin/short", "example.com/runner=/bin/exact"]);
        assert_eq!(imgs.binary_for("example.com/runner:1"), Some(Path::new("/bin/exact")));
        assert_eq!(imgs.binary_for("other.com/runner:1"), Some(Path::new("/bin/short")));
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        assert_eq!(repository("localhost:5000/runner"), "localhost:5000/runner");
        assert_eq!(repository("localhost:5000/runner:v1"), "localhost:5000/runner");
    }

    #[test]
    fn a_mapping_needs_an_image_and_a_path() {
        assert!("runner".parse::<ImageMapping>().is_err());
        assert!("=/bin/x".parse::<ImageMapping>().is_err());
        assert!("runner=".parse::<ImageMapping>().is_err());
    }
}
