//! An S3 prefix as an object store, through aws-sdk-s3: the default credential chain, an
//! optional endpoint for S3-compatible servers, retries with backoff, streamed range reads and
//! multipart uploads.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};

use super::{ByteReader, Condition, ObjectMeta, ObjectStore, ObjectWriter, StorageError, Versioned};

/// Multipart part size: S3's minimum is 5 MiB; larger parts mean fewer requests.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// How to reach S3; anything left out comes from the environment (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, profiles, IRSA, …) as the AWS SDKs do.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `None`: path-style when an endpoint is set (MinIO and most S3-compatible servers).
    pub force_path_style: Option<bool>,
}

/// Builds the one client the process shares. Credentials stay inside the SDK; nothing here logs them.
pub async fn s3_client(opts: &S3Options) -> Client {
    let region = RegionProviderChain::first_try(opts.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::new("us-east-1"));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(6)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(8)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(endpoint) = &opts.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let shared = loader.load().await;
    let endpoint_set = opts.endpoint.is_some() || shared.endpoint_url().is_some();
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(opts.force_path_style.unwrap_or(endpoint_set))
        .build();
    Client::from_conf(conf)
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
}

impl S3Store {
    /// The object from `offset` on, as a stream; with `etag`, only while it is that version.
    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        etag: Option<&str>,
    ) -> Result<ByteReader, StorageError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(self.key(key));
        if offset > 0 {
            req = req.range(format!("bytes={offset}-"));
        }
        if let Some(etag) = etag {
            req = req.if_match(format!("\"{etag}\""));
        }
        match req.send().await {
            Ok(out) => Ok(Box::pin(out.body.into_async_read())),
            Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                Some(412) if etag.is_some() => Err(StorageError::Changed { uri: self.uri(key) }),
                // A range starting at the end (a shard resumed after its last line) is answered
                // 416: there is nothing left to read, which is not an error.
                Some(416) if offset > 0 => Ok(Box::pin(tokio::io::BufReader::new(tokio::io::empty()))),
                _ => Err(self.error("read", key, e)),
            },
        }
    }

    pub fn new(client: Client, bucket: String, prefix: String) -> Self {
        let prefix = match prefix.trim_end_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        S3Store { client, bucket, prefix }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error<E>(&self, op: &'static str, key: &str, err: SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        classify(op, self.uri(key), err)
    }
}

fn classify<E>(op: &'static str, uri: String, err: SdkError<E>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    match (&err, code.as_deref(), status) {
        (_, Some("NoSuchBucket"), _) => StorageError::NoSuchBucket { uri },
        (_, Some("NoSuchKey" | "NotFound"), _) | (_, _, Some(404)) => StorageError::NotFound { uri },
        (
            _,
            Some(
                c @ ("AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "AllAccessDisabled"),
            ),
            _,
        ) => StorageError::Denied { op, uri, code: c.to_string() },
        (_, _, Some(401 | 403)) => {
            StorageError::Denied { op, uri, code: format!("HTTP {}", status.unwrap_or(403)) }
        }
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _, _) => {
            StorageError::Unreachable { op, uri, detail: DisplayErrorContext(&err).to_string() }
        }
        _ => StorageError::S3 { op, uri, detail: DisplayErrorContext(&err).to_string() },
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(key))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match self.client.head_object().bucket(&self.bucket).key(self.key(key)).send().await {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().unwrap_or_default().trim_matches('"').to_string(),
            })),
            Err(e) => match self.error("inspect", key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(self.get_versioned(key).await?.map(|v| v.body))
    }

    async fn read_from(&self, key: &str, offset: u64) -> Result<ByteReader, StorageError> {
        self.read_range(key, offset, None).await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.error("write", key, e))?;
        Ok(())
    }

    async fn read_version_from(
        &self,
        key: &str,
        offset: u64,
        etag: &str,
    ) -> Result<ByteReader, StorageError> {
        // One request: S3 checks the ETag and serves the range together (If-Match), so no
        // replacement can slip in between a check and the read.
        self.read_range(key, offset, Some(etag)).await
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        let out = match self.client.get_object().bucket(&self.bucket).key(self.key(key)).send().await {
            Ok(out) => out,
            Err(e) => {
                return match self.error("read", key, e) {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let version = out.e_tag().unwrap_or_default().to_string();
        let data = out.body.collect().await.map_err(|e| StorageError::S3 {
            op: "read",
            uri: self.uri(key),
            detail: DisplayErrorContext(&e).to_string(),
        })?;
        Ok(Some(Versioned { body: data.into_bytes(), version }))
    }

    async fn put_if(&self, key: &str, body: Bytes, condition: Condition<'_>) -> Result<String, StorageError> {
        let req =
            self.client.put_object().bucket(&self.bucket).key(self.key(key)).body(ByteStream::from(body));
        let req = match condition {
            Condition::Absent => req.if_none_match("*"),
            Condition::Version(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(out) => Ok(out.e_tag().unwrap_or_default().to_string()),
            // 412: the condition failed; 409: a concurrent conditional write to the same key
            // (AWS) is in flight. Either way another writer got there first.
            Err(e) if matches!(e.raw_response().map(|r| r.status().as_u16()), Some(409 | 412)) => {
                Err(StorageError::Conflict { uri: self.uri(key) })
            }
            Err(e) => Err(self.error("write", key, e)),
        }
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(S3Writer {
            store: self.clone(),
            key: key.to_string(),
            buf: BytesMut::with_capacity(PART_SIZE),
            upload_id: None,
            parts: Vec::new(),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.key(prefix))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", prefix, e))?;
            for obj in page.contents() {
                let Some(full) = obj.key() else { continue };
                let Some(key) = full.strip_prefix(&self.prefix) else { continue };
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    etag: obj.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let objects = self.list(prefix).await?;
        // DeleteObjects takes at most 1000 keys a request.
        for batch in objects.chunks(1000) {
            let ids = batch
                .iter()
                .map(|o| ObjectIdentifier::builder().key(self.key(&o.key)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::S3 {
                    op: "delete",
                    uri: self.uri(prefix),
                    detail: e.to_string(),
                })?;
            let delete = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| {
                StorageError::S3 { op: "delete", uri: self.uri(prefix), detail: e.to_string() }
            })?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("delete", prefix, e))?;
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| self.error("delete", key, e))?;
        Ok(())
    }
}

/// Buffers one part at a time; objects smaller than a part become one plain PUT.
struct S3Writer {
    store: S3Store,
    key: String,
    buf: BytesMut,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
}

impl S3Writer {
    async fn upload_part(&mut self) -> Result<(), StorageError> {
        let s = &self.store;
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let out = s
                    .client
                    .create_multipart_upload()
                    .bucket(&s.bucket)
                    .key(s.key(&self.key))
                    .send()
                    .await
                    .map_err(|e| s.error("start uploading", &self.key, e))?;
                let id = out.upload_id().unwrap_or_default().to_string();
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let body = self.buf.split().freeze();
        let out = s
            .client
            .upload_part()
            .bucket(&s.bucket)
            .key(s.key(&self.key))
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s.error("upload a part of", &self.key, e))?;
        self.parts.push(
            CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_string)).build(),
        );
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.buf.extend_from_slice(&data);
        if self.buf.len() >= PART_SIZE {
            self.upload_part().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        if self.upload_id.is_none() {
            let body = self.buf.split().freeze();
            return self.store.put(&self.key, body).await;
        }
        // A failed upload is aborted: S3 keeps (and bills) the parts of an unfinished one.
        if !self.buf.is_empty()
            && let Err(e) = self.upload_part().await
        {
            self.abort().await;
            return Err(e);
        }
        let s = &self.store;
        let completed = s
            .client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(s.key(&self.key))
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(self.parts.clone())).build())
            .send()
            .await
            .map_err(|e| s.error("finish uploading", &self.key, e));
        if let Err(e) = completed {
            self.abort().await;
            return Err(e);
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        if let Some(id) = &self.upload_id {
            let s = &self.store;
            let _ = s
                .client
                .abort_multipart_upload()
                .bucket(&s.bucket)
                .key(s.key(&self.key))
                .upload_id(id)
                .send()
                .await;
        }
    }
}
