//! What the code `service!` generates calls at run time, kept here rather than in the
//! generated types, so that no helper's name can collide with a service's method names.
//! Not part of the API: used only through `$crate::macro_support` in `macros.rs`.

use std::borrow::Cow;

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

/// True if no two of `names` (the methods' wire names) are the same.
pub const fn all_distinct(names: &[&str]) -> bool {
    let mut i = 0;
    while i < names.len() {
        let mut j = i + 1;
        while j < names.len() {
            if same_bytes(names[i].as_bytes(), names[j].as_bytes()) {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

/// `a == b`, in a `const fn`.
const fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut at = 0;
    while at < a.len() {
        if a[at] != b[at] {
            return false;
        }
        at += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_distinct_unless_two_are_the_same() {
        assert!(all_distinct(&["Multiply", "Divide", "multiply"]));
        assert!(!all_distinct(&["audit", "Divide", "audit"]));
        assert!(all_distinct(&["a"]));
        assert!(!all_distinct(&["ab", "ab"]));
    }

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
