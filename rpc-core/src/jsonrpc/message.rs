//! The messages of Go's `net/rpc/jsonrpc` (JSON-RPC 1.0): reading a request or a response
//! out of one JSON object, and writing them.
//!
//! ```text
//! request   {"method":"Arith.Multiply","params":[{"A":7,"B":8}],"id":0}
//! response  {"id":0,"result":56,"error":null}
//! error     {"id":0,"result":null,"error":"divide by zero"}
//! ```
//!
//! A message is first checked whole with the JSON codec (under its nesting and element
//! limits); then its top-level members are found by a scan that may assume valid JSON, so
//! the argument and the id are borrowed straight from the input: nothing is built for them,
//! and a 4 MiB request costs no more than 4 MiB. Member names match case-insensitively and the
//! last duplicate wins, as in Go's `encoding/json`.

use std::ops::Range;

use bytes::{BufMut, BytesMut};
use rpc_codec::{Codec, CodecKind};
use serde::de::IgnoredAny;
use serde::Serialize;

/// A request, borrowing from the message it was read from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    /// `Service.Method`; empty if the request named none.
    pub(crate) method: String,
    /// The argument, as the caller sent it.
    pub(crate) params: Params<'a>,
    /// The request id, verbatim (any JSON value), echoed in the response; `null` if absent.
    pub(crate) id: &'a [u8],
}

/// What a request's `params` member held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Params<'a> {
    /// An array of one value: the argument.
    One(&'a [u8]),
    /// No `params`, or `null` (Go: "request body missing params").
    Missing,
    /// Something other than an array of one value; the text says what.
    Invalid(String),
}

/// A response, borrowing from the message it was read from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response<'a> {
    /// The id of the request it answers.
    pub(crate) id: u64,
    /// The method's error, if it failed.
    pub(crate) error: Option<String>,
    /// The reply value (`null` when absent).
    pub(crate) result: &'a [u8],
}

/// Reads a request.
///
/// # Errors
///
/// A description of what is wrong, if `message` is not valid JSON within the codec's limits,
/// not an object, or has a `method` that is not a string.
pub(crate) fn parse_request(message: &[u8]) -> Result<Request<'_>, String> {
    let members = Members::read(message, &["method", "params", "id"])?;
    let [method, params, id] = members.found;
    let method = match method {
        Some(range) => decode::<Option<String>>(&message[range], "method")?.unwrap_or_default(),
        None => String::new(),
    };
    let params = match params {
        Some(range) => params_of(&message[range]),
        None => Params::Missing,
    };
    let id = id.map_or(&NULL[..], |range| &message[range]);
    // The id is echoed back verbatim, and the parser does not look inside the strings it
    // skips: one that is not UTF-8 (as RFC 8259 asks) would make the response invalid JSON.
    std::str::from_utf8(id).map_err(|err| format!("request id is not UTF-8: {err}"))?;
    Ok(Request { method, params, id })
}

/// Reads a response.
///
/// # Errors
///
/// A description of what is wrong, if `message` is not valid JSON within the codec's limits,
/// not an object, or its `id` is not an unsigned integer or its `error` neither `null` nor a
/// string (Go's client gives up on the connection for these too).
pub(crate) fn parse_response(message: &[u8]) -> Result<Response<'_>, String> {
    let members = Members::read(message, &["id", "result", "error"])?;
    let [id, result, error] = members.found;
    let id = match id {
        Some(range) => decode::<u64>(&message[range], "id")?,
        None => return Err("response has no `id`".to_owned()),
    };
    let error = match error {
        Some(range) => decode_error_text(&message[range])?,
        None => None,
    };
    // Go's client reads an empty error text as "unspecified error".
    let error = error.map(|text| match text.is_empty() {
        true => "unspecified error".to_owned(),
        false => text,
    });
    let result = result.map_or(&NULL[..], |range| &message[range]);
    Ok(Response { id, error, result })
}

/// Appends a request with `id`, `method` and the argument `args` (Go: `clientRequest`).
///
/// # Errors
///
/// The codec's error if `args` cannot be encoded as JSON.
pub(crate) fn encode_request<A: Serialize + ?Sized>(
    out: &mut BytesMut,
    id: u64,
    method: &str,
    args: &A,
) -> Result<(), rpc_codec::CodecError> {
    out.put_slice(b"{\"method\":");
    CodecKind::Json.encode(method, out)?;
    out.put_slice(b",\"params\":[");
    CodecKind::Json.encode(args, out)?;
    out.put_slice(b"],\"id\":");
    out.put_slice(id.to_string().as_bytes());
    out.put_slice(b"}\n");
    Ok(())
}

/// Appends the start of a successful response to request `id`; the reply value follows, then
/// [`finish_response`].
pub(crate) fn start_response(out: &mut BytesMut, id: &[u8]) {
    out.put_slice(b"{\"id\":");
    out.put_slice(id);
    out.put_slice(b",\"result\":");
}

/// Appends the end of a successful response.
pub(crate) fn finish_response(out: &mut BytesMut) {
    out.put_slice(b",\"error\":null}\n");
}

/// An error response to request `id` (Go: `serverResponse` with `Error` set).
pub(crate) fn error_response(id: &[u8], message: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(id.len() + message.len() + 48);
    out.put_slice(b"{\"id\":");
    out.put_slice(id);
    out.put_slice(b",\"result\":null,\"error\":");
    // A string always encodes as JSON.
    let _ = CodecKind::Json.encode(message, &mut out);
    out.put_slice(b"}\n");
    out
}

/// The JSON `null`, for an absent id or result.
pub(crate) const NULL: [u8; 4] = *b"null";

/// The members of interest of one object, by position in the list of names asked for.
struct Members<const N: usize> {
    found: [Option<Range<usize>>; N],
}

impl<const N: usize> Members<N> {
    /// Checks `message` as JSON, then finds the value of each of `names` in it.
    fn read(message: &[u8], names: &[&str; N]) -> Result<Self, String> {
        CodecKind::Json
            .decode::<IgnoredAny>(message)
            .map_err(|err| err.to_string())?;
        let mut at = skip_whitespace(message, 0);
        if message.get(at) != Some(&b'{') {
            return Err("message is not a JSON object".to_owned());
        }
        let mut found = [(); N].map(|()| None);
        at = skip_whitespace(message, at + 1);
        // Valid JSON from here: each member is `"name" : value`, then `,` or `}`.
        while message.get(at) == Some(&b'"') {
            let name_end = skip_value(message, at);
            let name = &message[at..name_end];
            let value_start = skip_whitespace(message, skip_whitespace(message, name_end) + 1);
            let value_end = skip_value(message, value_start);
            if let Some(index) = names.iter().position(|wanted| name_matches(name, wanted)) {
                found[index] = Some(value_start..value_end);
            }
            at = skip_whitespace(message, value_end);
            if message.get(at) == Some(&b',') {
                at = skip_whitespace(message, at + 1);
            }
        }
        Ok(Members { found })
    }
}

/// What a request's `params` value holds.
fn params_of(value: &[u8]) -> Params<'_> {
    match value.first() {
        Some(b'n') => return Params::Missing,
        Some(b'[') => {}
        _ => {
            return Params::Invalid(format!(
                "params must be an array holding the argument, found {}",
                kind_of(value)
            ))
        }
    }
    let first = skip_whitespace(value, 1);
    if value.get(first) == Some(&b']') {
        return Params::Invalid("params is an empty array: expected one argument".to_owned());
    }
    let first_end = skip_value(value, first);
    let mut count = 1;
    let mut at = skip_whitespace(value, first_end);
    while value.get(at) == Some(&b',') {
        count += 1;
        at = skip_value(value, skip_whitespace(value, at + 1));
        at = skip_whitespace(value, at);
    }
    if count > 1 {
        return Params::Invalid(format!(
            "params holds {count} values: expected one argument"
        ));
    }
    Params::One(&value[first..first_end])
}

/// Decodes one member's value as `T`.
fn decode<T: serde::de::DeserializeOwned>(value: &[u8], member: &str) -> Result<T, String> {
    CodecKind::Json
        .decode(value)
        .map_err(|_| format!("`{member}` is {}, not of the expected type", kind_of(value)))
}

/// A response's `error` member: a string or `null`. Bytes that are not UTF-8 inside the
/// string, and `\u` escapes of half a surrogate pair, are read as U+FFFD, as Go's client
/// reads them, rather than ending the connection.
///
/// # Errors
///
/// A description if the member is neither a string nor `null`.
fn decode_error_text(value: &[u8]) -> Result<Option<String>, String> {
    decode::<Option<String>>(value, "error").or_else(|err| {
        let repaired = replace_lone_surrogates(&String::from_utf8_lossy(value));
        decode(repaired.as_bytes(), "error").map_err(|_| err)
    })
}

/// `json` with every `\uD800`-`\uDFFF` escape that is not half of a high-then-low pair
/// replaced by `\uFFFD` (which serde_json refuses and Go reads as U+FFFD).
fn replace_lone_surrogates(json: &str) -> String {
    let escaped_unit = |at: usize| {
        let hex = json.get(at..at + 6)?.strip_prefix("\\u")?;
        u16::from_str_radix(hex, 16).ok()
    };
    let mut out = String::with_capacity(json.len());
    let mut at = 0;
    while let Some(offset) = json[at..].find('\\') {
        out.push_str(&json[at..at + offset]);
        at += offset;
        match escaped_unit(at) {
            Some(0xD800..=0xDBFF)
                if escaped_unit(at + 6).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) =>
            {
                out.push_str(&json[at..at + 12]);
                at += 12;
            }
            Some(0xD800..=0xDFFF) => {
                out.push_str("\\ufffd");
                at += 6;
            }
            // Any other escape, its backslash and the character after it as they are.
            _ => {
                let end = json[at + 1..]
                    .chars()
                    .next()
                    .map_or(at + 1, |c| at + 1 + c.len_utf8());
                out.push_str(&json[at..end]);
                at = end;
            }
        }
    }
    out.push_str(&json[at..]);
    out
}

/// True if the member name `quoted` (with its quotes) is `wanted`, ignoring ASCII case.
fn name_matches(quoted: &[u8], wanted: &str) -> bool {
    let inner = &quoted[1..quoted.len() - 1];
    if !inner.contains(&b'\\') {
        return inner.eq_ignore_ascii_case(wanted.as_bytes());
    }
    // An escaped name (`"\u006did"`) is rare: decode it.
    CodecKind::Json
        .decode::<String>(quoted)
        .is_ok_and(|name| name.eq_ignore_ascii_case(wanted))
}

/// "an object", "a number", ...: the kind of JSON value `value` is, for error texts.
fn kind_of(value: &[u8]) -> &'static str {
    match value.first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The index of the first non-whitespace byte at or after `at`.
fn skip_whitespace(json: &[u8], mut at: usize) -> usize {
    while json.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// The index just past the value starting at `at`, in valid JSON.
fn skip_value(json: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut at = start;
    while let Some(&byte) = json.get(at) {
        at += 1;
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    if depth == 0 {
                        return at;
                    }
                }
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            // At depth 0 the bracket closes the parent and ends a number or literal.
            b'}' | b']' if depth == 0 => return at - 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return at;
                }
            }
            b',' | b':' if depth == 0 => return at - 1,
            _ if depth == 0 && byte.is_ascii_whitespace() => return at - 1,
            _ => {}
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    mod serde_json_free {
        /// A value of any depth: nested arrays.
        #[derive(Debug, serde::Deserialize)]
        pub(super) struct Nested(#[allow(dead_code)] pub(super) Vec<Nested>);
    }

    #[test]
    fn an_error_text_with_bytes_that_are_not_utf8_is_read_with_replacement_characters() {
        let message = b"{\"id\":3,\"result\":null,\"error\":\"bad \xff byte\"}";
        let response = parse_response(message).expect("read as Go reads it");
        assert_eq!(response.error.as_deref(), Some("bad \u{fffd} byte"));
        // Not a string at all is still refused.
        let message = b"{\"id\":3,\"result\":null,\"error\":7}";
        assert!(parse_response(message).is_err());
    }

    #[test]
    fn an_error_text_with_half_a_surrogate_pair_is_read_with_replacement_characters() {
        let message =
            br#"{"id":3,"result":null,"error":"a \ud800 b \udc00 c \ud83d\ude00 \\ud800"}"#;
        let response = parse_response(message).expect("read as Go reads it");
        assert_eq!(
            response.error.as_deref(),
            Some("a \u{fffd} b \u{fffd} c \u{1f600} \\ud800")
        );
    }

    #[test]
    fn a_go_request_is_read_with_its_argument_and_id_borrowed() {
        let message = br#"{"method":"Arith.Multiply","params":[{"A":7,"B":8}],"id":0}"#;
        let request = parse_request(message).unwrap();
        assert_eq!(request.method, "Arith.Multiply");
        assert_eq!(request.params, Params::One(br#"{"A":7,"B":8}"#));
        assert_eq!(request.id, b"0");
    }

    #[test]
    fn any_id_is_kept_verbatim_and_a_missing_one_is_null() {
        let message = br#" { "ID" : {"a":[1, "x"]} , "Params" : [ 5 ] , "METHOD" : "A.B" } "#;
        let request = parse_request(message).unwrap();
        assert_eq!(request.id, br#"{"a":[1, "x"]}"#);
        assert_eq!(request.params, Params::One(b"5"));
        assert_eq!(request.method, "A.B");
        let request = parse_request(br#"{"method":"A.B","params":["x"]}"#).unwrap();
        assert_eq!(request.id, b"null");
        let request = parse_request(br#"{"\u006dethod":"A.B","id":"s","id":7}"#).unwrap();
        assert_eq!((request.method.as_str(), request.id), ("A.B", &b"7"[..]));
    }

    #[test]
    fn a_request_id_that_is_not_utf8_is_refused_not_echoed() {
        // An id is echoed verbatim: one holding a byte that is not UTF-8 would make the
        // response invalid JSON.
        let message = b"{\"method\":\"A.B\",\"params\":[1],\"id\":\"\xff\"}";
        let refused = parse_request(message).map(|request| request.id);
        assert!(
            matches!(&refused, Err(text) if text.starts_with("request id is not UTF-8")),
            "{refused:?}"
        );
        // Elsewhere it is the argument's decoder's to refuse, for that call only.
        let message = b"{\"method\":\"A.B\",\"params\":[\"\xff\"],\"id\":1}";
        assert!(parse_request(message).is_ok());
    }

    #[test]
    fn params_other_than_one_value_in_an_array_are_named() {
        let params = |text: &str| {
            let message = format!(r#"{{"method":"A.B","params":{text},"id":1}}"#);
            match parse_request(message.as_bytes()).unwrap().params {
                Params::Invalid(detail) => detail,
                other => format!("{other:?}"),
            }
        };
        assert_eq!(params("null"), "Missing");
        assert_eq!(
            params(r#"{"A":1}"#),
            "params must be an array holding the argument, found an object"
        );
        assert_eq!(
            params("3"),
            "params must be an array holding the argument, found a number"
        );
        assert_eq!(
            params("[ ]"),
            "params is an empty array: expected one argument"
        );
        assert_eq!(
            params(r#"[1, "]", [2]]"#),
            "params holds 3 values: expected one argument"
        );
        assert_eq!(params(r#"[ "a,b" ]"#), r#"One([34, 97, 44, 98, 34])"#);
        let request = parse_request(br#"{"method":"A.B","id":1}"#).unwrap();
        assert_eq!(request.params, Params::Missing);
    }

    #[test]
    fn malformed_or_mistyped_requests_are_refused() {
        assert!(parse_request(b"{\"method\":").is_err());
        assert!(parse_request(b"{\"method\":\"A.B\"} x").is_err());
        assert!(parse_request(b"[1]").is_err());
        let err = parse_request(br#"{"method":5,"params":[1],"id":1}"#).unwrap_err();
        assert_eq!(err, "`method` is a number, not of the expected type");
    }

    #[test]
    fn deep_nesting_is_checked_without_recursion_and_refused_when_the_argument_decodes() {
        // Checking the message skips values iteratively; the argument's own decode (the
        // handler's) applies the nesting limit and fails with a typed error.
        let deep = format!("{{\"params\":[{}{}]}}", "[".repeat(5000), "]".repeat(5000));
        let request = parse_request(deep.as_bytes()).unwrap();
        let Params::One(argument) = request.params else {
            panic!("expected one argument, got {:?}", request.params);
        };
        let err = CodecKind::Json
            .decode::<serde_json_free::Nested>(argument)
            .unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
    }

    #[test]
    fn a_go_response_is_read_and_an_empty_error_is_unspecified() {
        let response = parse_response(br#"{"id":3,"result":{"Quo":3,"Rem":2},"error":null}"#);
        assert_eq!(
            response,
            Ok(Response {
                id: 3,
                error: None,
                result: br#"{"Quo":3,"Rem":2}"#
            })
        );
        let response = parse_response(br#"{"id":4,"result":null,"error":"divide by zero"}"#);
        assert_eq!(response.unwrap().error.as_deref(), Some("divide by zero"));
        let response = parse_response(br#"{"id":4,"result":null,"error":""}"#);
        assert_eq!(
            response.unwrap().error.as_deref(),
            Some("unspecified error")
        );
        assert!(parse_response(br#"{"id":-1,"result":1}"#).is_err());
        assert!(parse_response(br#"{"id":1,"error":{"code":1}}"#).is_err());
        assert!(parse_response(br#"{"result":1}"#).is_err());
    }

    #[test]
    fn written_messages_read_back() {
        let mut out = BytesMut::new();
        encode_request(&mut out, 9, "Arith.Sum", &[1, 2]).unwrap();
        assert_eq!(
            &out[..],
            b"{\"method\":\"Arith.Sum\",\"params\":[[1,2]],\"id\":9}\n"
        );
        let mut out = BytesMut::new();
        start_response(&mut out, b"\"x\"");
        out.put_slice(b"15");
        finish_response(&mut out);
        assert_eq!(&out[..], b"{\"id\":\"x\",\"result\":15,\"error\":null}\n");
        let out = error_response(b"2", "say \"no\"");
        assert_eq!(
            &out[..],
            b"{\"id\":2,\"result\":null,\"error\":\"say \\\"no\\\"\"}\n"
        );
    }
}
