//! The decode guard: bounds how deep a value may nest and how many elements it may declare,
//! whatever the codec.
//!
//! It wraps a codec's `serde::Deserializer`, and every visitor, sequence, map, enum and seed
//! that the deserializer hands out, so it sees each step of a decode:
//!
//! - entering a sequence, map, enum, `Some` or newtype adds a level; past
//!   [`MAX_DECODE_DEPTH`] levels the decode fails, long before the stack could overflow
//!   (postcard has no depth limit of its own);
//! - each element of a sequence whose length the input declares, and each map entry, takes
//!   one unit of a budget of `input length + 4096`, so a 4-byte input cannot declare 2^28
//!   zero-sized elements and spin for seconds (the fields of a tuple, an array or a struct,
//!   whose number the type fixes, take none: postcard decodes those element by element too,
//!   and a long list of 32-byte hashes, 33 elements in 32 bytes each, was refused);
//! - the length a sequence or map declares is capped at the remaining budget before a visitor
//!   sees it, so a lying length never makes `Vec::with_capacity` reserve more than the input
//!   could fill.
//!
//! A guard failure travels through the codec as a serde "custom" error (the only error a
//! wrapper can raise); the guard also records which limit tripped, so `decode` can report
//! the typed [`CodecError`] instead of the codec's text.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::error::CodecError;

/// Deepest nesting a decoded value may have. Below serde_json's own limit (128), so both
/// codecs report the same [`CodecError::TooDeep`].
pub const MAX_DECODE_DEPTH: usize = 100;

/// Elements allowed beyond one per input byte (for zero-sized elements such as `()`).
pub const EXTRA_ELEMENT_ALLOWANCE: usize = 4096;

/// Decodes a `T` from `deserializer` under the guard's limits.
pub(crate) fn decode<'de, D, T>(
    deserializer: D,
    codec: &'static str,
    input_len: usize,
) -> Result<T, CodecError>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let budget = Budget::new(input_len.saturating_add(EXTRA_ELEMENT_ALLOWANCE));
    let result = T::deserialize(Guarded {
        inner: deserializer,
        budget: &budget,
    });
    result.map_err(|err| match budget.tripped.get() {
        Some(Limit::Depth) => CodecError::TooDeep {
            codec,
            limit: MAX_DECODE_DEPTH,
        },
        Some(Limit::Elements) => CodecError::TooManyElements {
            codec,
            limit: budget.element_limit,
        },
        None => CodecError::Decode {
            codec,
            detail: err.to_string(),
        },
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Depth,
    Elements,
}

/// The guard's state for one decode, shared by every wrapper (decoding is single-threaded).
struct Budget {
    depth: Cell<usize>,
    elements_left: Cell<usize>,
    element_limit: usize,
    tripped: Cell<Option<Limit>>,
}

impl Budget {
    fn new(element_limit: usize) -> Self {
        Budget {
            depth: Cell::new(0),
            elements_left: Cell::new(element_limit),
            element_limit,
            tripped: Cell::new(None),
        }
    }

    fn enter<E: de::Error>(&self) -> Result<Level<'_>, E> {
        let depth = self.depth.get() + 1;
        if depth > MAX_DECODE_DEPTH {
            self.tripped.set(Some(Limit::Depth));
            return Err(E::custom(format_args!(
                "value nests deeper than {MAX_DECODE_DEPTH} levels"
            )));
        }
        self.depth.set(depth);
        Ok(Level(self))
    }

    fn take_element<E: de::Error>(&self) -> Result<(), E> {
        let left = self.elements_left.get();
        if left == 0 {
            self.tripped.set(Some(Limit::Elements));
            return Err(E::custom(format_args!(
                "more than {} elements declared",
                self.element_limit
            )));
        }
        self.elements_left.set(left - 1);
        Ok(())
    }

    fn cap_hint(&self, hint: Option<usize>) -> Option<usize> {
        hint.map(|declared| declared.min(self.elements_left.get()))
    }
}

/// One level of nesting; leaving it (dropping this) restores the depth.
struct Level<'b>(&'b Budget);

impl Drop for Level<'_> {
    fn drop(&mut self) {
        self.0.depth.set(self.0.depth.get() - 1);
    }
}

/// A deserializer under the guard.
struct Guarded<'b, D> {
    inner: D,
    budget: &'b Budget,
}

/// A visitor under the guard.
struct GuardedVisitor<'b, V> {
    inner: V,
    budget: &'b Budget,
    /// Whether a sequence it visits has a length the input declared (its elements take from
    /// the budget), not one the type fixes (a tuple, an array, a struct's fields).
    declared: bool,
}

/// A seed under the guard: the deserializer it is given is guarded too.
struct GuardedSeed<'b, S> {
    inner: S,
    budget: &'b Budget,
}

struct GuardedSeq<'b, A> {
    inner: A,
    budget: &'b Budget,
    /// Its elements take from the budget (see [`GuardedVisitor`]).
    declared: bool,
}

struct GuardedMap<'b, A> {
    inner: A,
    budget: &'b Budget,
}

struct GuardedEnum<'b, A> {
    inner: A,
    budget: &'b Budget,
}

struct GuardedVariant<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'b, V> GuardedVisitor<'b, V> {
    fn new(inner: V, budget: &'b Budget) -> Self {
        GuardedVisitor {
            inner,
            budget,
            declared: true,
        }
    }

    /// For a value whose number of elements the type fixes (a tuple, an array, a struct).
    fn fixed(inner: V, budget: &'b Budget) -> Self {
        GuardedVisitor {
            inner,
            budget,
            declared: false,
        }
    }
}

/// Forwards `deserialize_*` methods that take only a visitor.
macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.inner.$method(GuardedVisitor::new(visitor, self.budget))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Guarded<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_unit_struct(name, GuardedVisitor::new(visitor, self.budget))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_newtype_struct(name, GuardedVisitor::new(visitor, self.budget))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_tuple(len, GuardedVisitor::fixed(visitor, self.budget))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_tuple_struct(name, len, GuardedVisitor::fixed(visitor, self.budget))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_struct(name, fields, GuardedVisitor::fixed(visitor, self.budget))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_enum(name, variants, GuardedVisitor::new(visitor, self.budget))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards `visit_*` methods that take one plain value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, value: $ty) -> Result<Self::Value, E> {
            self.inner.$method(value)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for GuardedVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(formatter)
    }

    forward_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String) visit_bytes(&[u8])
        visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let _level = self.budget.enter::<D::Error>()?;
        self.inner.visit_some(Guarded {
            inner: deserializer,
            budget: self.budget,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        let _level = self.budget.enter::<D::Error>()?;
        self.inner.visit_newtype_struct(Guarded {
            inner: deserializer,
            budget: self.budget,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let _level = self.budget.enter::<A::Error>()?;
        self.inner.visit_seq(GuardedSeq {
            inner: seq,
            budget: self.budget,
            declared: self.declared,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let _level = self.budget.enter::<A::Error>()?;
        self.inner.visit_map(GuardedMap {
            inner: map,
            budget: self.budget,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let _level = self.budget.enter::<A::Error>()?;
        self.inner.visit_enum(GuardedEnum {
            inner: data,
            budget: self.budget,
        })
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for GuardedSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.inner.deserialize(Guarded {
            inner: deserializer,
            budget: self.budget,
        })
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for GuardedSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        if self.declared {
            self.budget.take_element::<A::Error>()?;
        }
        self.inner.next_element_seed(GuardedSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.budget.cap_hint(self.inner.size_hint())
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for GuardedMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.budget.take_element::<A::Error>()?;
        self.inner.next_key_seed(GuardedSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.next_value_seed(GuardedSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.budget.cap_hint(self.inner.size_hint())
    }
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for GuardedEnum<'b, A> {
    type Error = A::Error;
    type Variant = GuardedVariant<'b, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let (value, variant) = self.inner.variant_seed(GuardedSeed {
            inner: seed,
            budget: self.budget,
        })?;
        Ok((
            value,
            GuardedVariant {
                inner: variant,
                budget: self.budget,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for GuardedVariant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.inner.newtype_variant_seed(GuardedSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .tuple_variant(len, GuardedVisitor::fixed(visitor, self.budget))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .struct_variant(fields, GuardedVisitor::fixed(visitor, self.budget))
    }
}
