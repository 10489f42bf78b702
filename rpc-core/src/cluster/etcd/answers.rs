//! The etcd gateway's JSON answers as typed structs holding only the fields netrpc reads.
//!
//! serde skips every other field as it reads it, without building it, so an answer costs
//! about the instances it holds, not a tree of its whole JSON (a 4 MiB answer of tiny objects
//! would be some 350 MiB as a `serde_json::Value`). The gateway omits empty and zero fields
//! (proto3's JSON mapping): an absent field reads as its default, and only a field of the
//! wrong type, or an answer that is no JSON object, is malformed.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use super::base64;
use super::http::Response;
use crate::cluster::registry::{Instance, RegistryError};

/// `/v3/kv/range`: the instances under a prefix and the revision they were read at.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RangeAnswer {
    /// The response header.
    #[serde(default)]
    pub(super) header: Header,
    /// The values under the prefix that are netrpc instances; any other value is skipped.
    #[serde(default, rename = "kvs", deserialize_with = "instances_of_kvs")]
    pub(super) instances: Vec<Instance>,
}

/// A response header: only the store revision.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Header {
    /// The store revision the answer was read at.
    #[serde(default, deserialize_with = "int64")]
    pub(super) revision: u64,
}

/// `/v3/lease/grant`: the lease granted.
#[derive(Debug, Deserialize)]
pub(super) struct GrantAnswer {
    /// The lease id; 0 (absent) is no lease.
    #[serde(default, rename = "ID", deserialize_with = "int64")]
    pub(super) id: u64,
    /// The TTL granted, in seconds; 0 when absent.
    #[serde(default, rename = "TTL", deserialize_with = "int64")]
    pub(super) ttl: u64,
}

/// `/v3/lease/keepalive`: one answer of the keep-alive stream.
#[derive(Debug, Deserialize)]
pub(super) struct KeepAliveAnswer {
    /// The renewal; `None` if the answer has none.
    #[serde(default)]
    pub(super) result: Option<KeepAliveResult>,
    /// How the gateway reports a failed streamed call (with status 200).
    #[serde(default)]
    pub(super) error: Option<StreamError>,
}

/// The renewal inside a [`KeepAliveAnswer`].
#[derive(Debug, Deserialize)]
pub(super) struct KeepAliveResult {
    /// The TTL left, in seconds; 0 (absent) for an unknown or expired lease.
    #[serde(default, rename = "TTL", deserialize_with = "int64")]
    pub(super) ttl: u64,
}

/// A streamed call's failure: `{"error":{"message":...}}`.
#[derive(Debug, Deserialize)]
pub(super) struct StreamError {
    /// etcd's error text.
    #[serde(default)]
    pub(super) message: String,
}

/// One line of the `/v3/watch` stream.
#[derive(Debug, Deserialize)]
pub(super) struct WatchMessage {
    /// The watch response; `None` if the line has none.
    #[serde(default)]
    pub(super) result: Option<WatchResult>,
    /// Present when the gateway reports the stream failed.
    #[serde(default)]
    pub(super) error: Option<IgnoredAny>,
}

/// The watch response inside a [`WatchMessage`].
#[derive(Debug, Deserialize)]
pub(super) struct WatchResult {
    /// True once etcd has cancelled the watch.
    #[serde(default)]
    pub(super) canceled: bool,
    /// The events, counted but not kept: any event means "list again".
    #[serde(default)]
    pub(super) events: Vec<IgnoredAny>,
}

/// Reads a status-200 answer as `T`.
///
/// # Errors
///
/// [`RegistryError::Malformed`] if `body` is not a JSON object of `T`'s shape.
pub(super) fn parse<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    what: &str,
) -> Result<T, RegistryError> {
    // A derived struct would also accept a JSON array (fields by position): refuse it here.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(malformed(&format!("{what} is not a JSON object")));
    }
    serde_json::from_slice(body).map_err(|err| malformed(&format!("{what}: {err}")))
}

/// The answer of a gateway call on status 200, or the error etcd sent.
///
/// # Errors
///
/// [`RegistryError::Backend`] for any other status (with etcd's `error` text if it sent
/// one), [`RegistryError::Malformed`] as [`parse`].
pub(super) fn parse_answer<'a, T: Deserialize<'a>>(
    response: &'a Response,
    what: &str,
) -> Result<T, RegistryError> {
    if response.status == 200 {
        return parse(&response.body, what);
    }
    #[derive(Deserialize)]
    struct ErrorAnswer {
        error: String,
    }
    let status = response.status;
    let message = match serde_json::from_slice::<ErrorAnswer>(&response.body) {
        Ok(answer) => format!("{} (http {status})", answer.error),
        Err(_) => format!(
            "http {status}: {}",
            String::from_utf8_lossy(&response.body[..response.body.len().min(80)]).trim()
        ),
    };
    Err(RegistryError::Backend { message })
}

/// Decodes one key's base64 `value`; `None` for anything not written by a netrpc registry (a
/// foreign or corrupt key under the prefix must not hide the valid ones).
pub(super) fn decode_instance(value: &str) -> Option<Instance> {
    let bytes = base64::decode(value).ok()?;
    let instance: Instance = serde_json::from_slice(&bytes).ok()?;
    instance.validate().ok()?;
    Some(instance)
}

/// A `RegistryError::Malformed` saying what was wrong.
pub(super) fn malformed(detail: &str) -> RegistryError {
    RegistryError::Malformed {
        detail: detail.to_owned(),
    }
}

/// One entry of `kvs`: only the value is read.
#[derive(Deserialize)]
struct KeyValue {
    /// Base64; absent for an empty value.
    #[serde(default)]
    value: String,
}

/// `kvs` read one entry at a time into the instances among them, so no entry is kept.
fn instances_of_kvs<'de, D: Deserializer<'de>>(kvs: D) -> Result<Vec<Instance>, D::Error> {
    struct Kvs;
    impl<'de> Visitor<'de> for Kvs {
        type Value = Vec<Instance>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of key-values")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Vec<Instance>, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut kvs: A) -> Result<Vec<Instance>, A::Error> {
            let mut instances = Vec::new();
            while let Some(kv) = kvs.next_element::<KeyValue>()? {
                instances.extend(decode_instance(&kv.value));
            }
            Ok(instances)
        }
    }
    kvs.deserialize_any(Kvs)
}

/// An int64 field, which the gateway writes as a JSON string (or a number).
fn int64<'de, D: Deserializer<'de>>(field: D) -> Result<u64, D::Error> {
    struct Int64;
    impl Visitor<'_> for Int64 {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer, or one in a string")
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value).map_err(|_| E::custom(format!("negative integer {value}")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            text.parse()
                .map_err(|_| E::custom(format!("`{}` is not an integer", text.escape_debug())))
        }
    }
    field.deserialize_any(Int64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_answer_keeps_only_the_instances_and_the_revision() {
        let good = serde_json::to_vec(&Instance::new("A", "h:1")).expect("encode");
        let body = format!(
            r#"{{"header":{{"revision":"12","raft_term":"3"}},"count":"3","kvs":[
                {{"key":"eA==","value":"not base64!"}},{{"key":"eQ==","value":"{}"}},
                {{"key":"eg==","value":"{}","lease":"7"}}]}}"#,
            base64::encode(b"{}"),
            base64::encode(&good)
        );
        let answer: RangeAnswer = parse(body.as_bytes(), "range").expect("valid");
        assert_eq!(answer.header.revision, 12);
        assert_eq!(answer.instances, vec![Instance::new("A", "h:1")]);
    }

    #[test]
    fn absent_fields_read_as_etcd_means_them_and_wrong_types_are_malformed() {
        let empty: RangeAnswer = parse(br#"{"header":{}}"#, "range").expect("no keys");
        assert!(empty.instances.is_empty());
        let expired: KeepAliveAnswer = parse(br#"{"result":{"ID":"7"}}"#, "x").expect("valid");
        assert_eq!(expired.result.map(|r| r.ttl), Some(0));
        for bad in [
            &br#"[1,2,3]"#[..],
            br#""hello""#,
            br#"{"kvs":"oops"}"#,
            br#"{"kvs":[1]}"#,
            br#"{"header":{"revision":"-1"}}"#,
            br#"{"header":{"revision":true}}"#,
        ] {
            let outcome = parse::<RangeAnswer>(bad, "range");
            assert!(
                matches!(outcome, Err(RegistryError::Malformed { .. })),
                "{} gave {outcome:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn etcd_error_answers_become_typed_errors() {
        let response = Response {
            status: 404,
            headers: Vec::new(),
            body: br#"{"error":"etcdserver: requested lease not found","code":5}"#.to_vec(),
        };
        let err = parse_answer::<GrantAnswer>(&response, "x").expect_err("an error answer");
        assert!(err.to_string().contains("lease not found"), "{err}");
        let response = Response {
            status: 200,
            headers: Vec::new(),
            body: b"<html>".to_vec(),
        };
        assert!(matches!(
            parse_answer::<GrantAnswer>(&response, "x"),
            Err(RegistryError::Malformed { .. })
        ));
    }

    #[test]
    fn foreign_values_under_the_prefix_are_skipped() {
        assert!(decode_instance("not base64!").is_none());
        assert!(decode_instance(&base64::encode(b"{}")).is_none());
        let good = serde_json::to_vec(&Instance::new("A", "h:1")).expect("encode");
        assert!(decode_instance(&base64::encode(&good)).is_some());
    }
}
