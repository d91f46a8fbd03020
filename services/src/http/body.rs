//! Reading request bodies and parameters the way the REST proxy does: the content type is
//! checked first (415), the size next (413, `--max-request-bytes`), then the JSON (400 when it
//! does not parse, 422 when it parses but is not the request the route takes). Path and query
//! parameters are parsed here too, so a bad number gets the proxy's error shape rather than a
//! framework's plain-text rejection.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The content type of a request, lower-cased, without parameters (`; charset=…`).
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether `ct` is a JSON content type: `application/json` or any `application/…+json`.
pub fn is_json(ct: &str) -> bool {
    ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
}

/// Most bytes of an oversized chunked body read (and dropped) before the 413 goes out.
const DRAIN_LIMIT: usize = 16 << 20;

/// The whole body, refused with 413 beyond `limit` bytes (by `Content-Length` before reading
/// anything, or while reading a chunked body).
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > (limit + DRAIN_LIMIT) as u64) {
        return Err(ApiError::too_large(limit));
    }
    // A declared size over the limit is refused too, but only once the body is read: the
    // connection then stays usable for the client's next request (an unread body makes the
    // server close it, and a client reusing it would see a reset instead of an answer).
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::bad_request("could not read the request body"))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if over {
            // Read on (within a bound) before answering 413: a client still sending a body
            // we stopped storing would otherwise see its connection reset, not the answer.
            drained += data.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        } else if buf.len() + data.len() > limit {
            over = true;
            buf.clear();
        } else {
            buf.extend_from_slice(&data);
        }
    }
    if over {
        return Err(ApiError::too_large(limit));
    }
    Ok(buf.freeze())
}

/// Parses `bytes` as JSON of type `T`: 400 when it is not JSON, 422 when it is JSON of
/// another shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::unprocessable(422, e.to_string()),
        _ => ApiError::bad_request(format!("Malformed JSON: {e}")),
    })
}

/// A JSON body of a route that takes any JSON content type. `None` when the body is empty
/// or `null` (for routes whose body is optional).
pub async fn optional_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Option<T>, ApiError> {
    let bytes = read_limited(headers, body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let ct = content_type(headers);
    if !is_json(&ct) {
        return Err(ApiError::unsupported_media_type(
            &ct,
            "application/vnd.kafka.v2+json or application/json",
        ));
    }
    // A JSON `null` is no body too.
    parse_json::<Option<T>>(&bytes)
}

/// A JSON body of a route that takes any JSON content type; an empty body is malformed.
pub async fn json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let ct = content_type(headers);
    if !is_json(&ct) {
        return Err(ApiError::unsupported_media_type(
            &ct,
            "application/vnd.kafka.v2+json or application/json",
        ));
    }
    let bytes = read_limited(headers, body, limit).await?;
    parse_json(&bytes)
}

/// A partition number from a path: anything that is not one names no partition (404 40402).
pub fn partition(topic: &str, raw: &str) -> Result<i32, ApiError> {
    raw.parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            40402,
            format!("Partition not found: '{raw}' is not a partition of topic '{topic}'."),
        )
    })
}

/// An optional non-negative integer query parameter; a bad one is a bad request.
pub fn query_u64(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match query.get(name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter '{name}' must be a non-negative integer, not '{v}'"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/vnd.kafka.v2+json"));
        assert!(is_json("application/vnd.kafka.binary.v2+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    #[test]
    fn malformed_and_misshapen_json_differ() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: i32,
        }
        assert_eq!(parse_json::<T>(b"{").unwrap_err().body.error_code, 400);
        assert_eq!(
            parse_json::<T>(b"{\"b\":1}").unwrap_err().body.error_code,
            422
        );
        assert_eq!(parse_json::<T>(b"{\"a\":1}").unwrap().a, 1);
    }
}
