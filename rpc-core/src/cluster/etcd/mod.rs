//! The etcd backend of the service registry, spoken through etcd's v3 JSON gateway (the
//! `/v3/...` HTTP paths of etcd 3.4 and later) with a small hand-written HTTP/1.1 client.
//!
//! | file | owns |
//! |---|---|
//! | `registry_etcd.rs` | [`EtcdRegistry`]: the key layout, leases, list and watch |
//! | `http.rs` | [`HttpClient`]: one blocking `POST` per connection, with a deadline |
//! | `http_decoder.rs` | [`ResponseDecoder`]: status line, headers, `Content-Length` and chunked bodies, sans I/O |
//! | `answers.rs` | the gateway's JSON answers as typed structs, reading only the fields used |
//! | `base64.rs` | the base64 the gateway wraps keys and values in |

mod answers;
pub mod base64;
mod http;
mod http_decoder;
mod registry_etcd;

pub use http::{
    HttpClient, HttpError, Response, ResponseStream, StreamEvent, DEFAULT_HTTP_TIMEOUT,
    DEFAULT_MAX_BODY_LEN,
};
pub use http_decoder::{
    BodyEvent, ResponseDecoder, ResponseHead, MAX_CHUNK_LINE_LEN, MAX_HEAD_LEN, MAX_TRAILERS_LEN,
};
pub use registry_etcd::{EtcdRegistry, DEFAULT_ETCD_PREFIX};
