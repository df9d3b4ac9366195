//! Request bodies read under the configured size limit, so an oversized body gets a JSON 413 and
//! is never buffered whole.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::errors::ApiError;

/// Reads `body`, failing with 413 as soon as it is known to exceed `limit` bytes (from
/// `Content-Length` before reading, or while reading).
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let capacity = declared.map_or(0, |n| n as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::malformed(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::body_too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn reads_bodies_up_to_the_limit_and_rejects_larger_ones() {
        let ok = read_limited(&HeaderMap::new(), Body::from("12345"), 5)
            .await
            .expect("fits");
        assert_eq!(ok.as_ref(), b"12345");
        let e = read_limited(&HeaderMap::new(), Body::from("123456"), 5)
            .await
            .expect_err("too large");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "1000".parse().expect("header"));
        let e = read_limited(&h, Body::from("1"), 5)
            .await
            .expect_err("declared too large");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
