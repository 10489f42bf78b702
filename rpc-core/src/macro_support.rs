//! What the code `service!` generates calls at run time, kept here rather than in the
//! generated types, so that no helper's name can collide with a service's method names.
//! Not part of the API: used only through `$crate::macro_support` in `macros.rs`.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::service::{MethodTable, ServiceError};

/// The full `Service.Method` name a typed client calls: `default` (its name constant), or
/// the same method under the service name the client was given
/// (`with_service_name`).
pub fn full_name(
    service_name: &Option<String>,
    default: &'static str,
    wire: &'static str,
) -> Cow<'static, str> {
    match service_name {
        None => Cow::Borrowed(default),
        Some(name) => Cow::Owned(format!("{name}.{wire}")),
    }
}

/// True if `name`, a method's name as `stringify!` spells it, is a raw identifier
/// (`r#type`), which cannot be its wire name.
pub const fn is_raw_identifier(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > 2 && bytes[0] == b'r' && bytes[1] == b'#'
}

/// Adds the method `name` to `table`, as [`MethodTable::add`] does, unless a method of
/// that name is there already: then the table remembers the name, and `Server::register`
/// refuses the service (two methods of a `service!` under one wire name).
pub fn add_method<A, R, F>(table: &mut MethodTable, name: &'static str, method: F)
where
    A: DeserializeOwned,
    R: Serialize,
    F: Fn(A) -> Result<R, ServiceError> + Send + Sync + 'static,
{
    table.add_once(name, method);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_identifiers_are_told_from_names_that_begin_with_r() {
        assert!(is_raw_identifier("r#type"));
        assert!(!is_raw_identifier("run"));
        assert!(!is_raw_identifier("r"));
        assert!(!is_raw_identifier("type"));
    }

    #[test]
    fn a_client_given_another_service_name_calls_under_it() {
        assert_eq!(
            full_name(&None, "Arith.Multiply", "Multiply"),
            "Arith.Multiply"
        );
        let calc = Some("Calc".to_owned());
        assert_eq!(
            full_name(&calc, "Arith.Multiply", "Multiply"),
            "Calc.Multiply"
        );
    }
}
