//! Where a model, input or output lives: a local path or an `s3://bucket/key` URI.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A local path or an S3 object/prefix, as the user wrote it on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{uri}` is not a valid location: {why}")]
pub struct LocationError {
    pub uri: String,
    pub why: &'static str,
}

impl FromStr for Location {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| LocationError { uri: s.to_string(), why };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(err("it names no bucket"));
            }
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
            if !bucket_ok {
                return Err(err("S3 bucket names are 3-63 lowercase letters, digits, `.` or `-`"));
            }
            return Ok(Location::S3 { bucket: bucket.to_string(), key: key.to_string() });
        }
        if s.contains("://") && !s.starts_with("file://") {
            return Err(err("only local paths, file:// and s3:// are supported"));
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.is_empty() {
            return Err(err("the path is empty"));
        }
        Ok(Location::Local(PathBuf::from(path)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

impl Location {
    /// Splits an object location into its folder and file name, so the object can be opened
    /// through a store rooted at its folder.
    pub fn split_file(&self) -> Option<(Location, String)> {
        match self {
            Location::Local(p) => {
                let name = p.file_name()?.to_str()?.to_string();
                let parent = match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                Some((Location::Local(parent), name))
            }
            Location::S3 { bucket, key } => {
                let key = key.trim_end_matches('/');
                if key.is_empty() {
                    return None;
                }
                let (folder, name) = key.rsplit_once('/').unwrap_or(("", key));
                Some((Location::S3 { bucket: bucket.clone(), key: folder.to_string() }, name.to_string()))
            }
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Location::S3 { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Location {
        s.parse().expect(s)
    }

    #[test]
    fn parses_s3_and_local_locations() {
        assert_eq!(
            loc("s3://my-bucket/a/b.jsonl"),
            Location::S3 { bucket: "my-bucket".into(), key: "a/b.jsonl".into() }
        );
        assert_eq!(loc("s3://my-bucket"), Location::S3 { bucket: "my-bucket".into(), key: "".into() });
        assert_eq!(loc("file:///tmp/x"), Location::Local("/tmp/x".into()));
        assert_eq!(loc("out/dir"), Location::Local("out/dir".into()));
    }

    #[test]
    fn rejects_bad_locations_naming_them() {
        for bad in ["s3:///key", "s3://Bad_Bucket/k", "gs://bucket/k", ""] {
            let err = bad.parse::<Location>().expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn splits_objects_into_folder_and_name() {
        assert_eq!(
            loc("s3://b1b/in/req.jsonl").split_file(),
            Some((loc("s3://b1b/in"), "req.jsonl".to_string()))
        );
        assert_eq!(loc("s3://b1b/req.jsonl").split_file(), Some((loc("s3://b1b"), "req.jsonl".into())));
        assert_eq!(loc("req.jsonl").split_file(), Some((loc("."), "req.jsonl".into())));
        assert_eq!(loc("s3://b1b/").split_file(), None);
    }
}
