//! The tutorials' `Arith` service (SEEDS §1), shared by the examples and the tests.
//!
//! Go's version: `type Arith int` with `Multiply(args *Args, reply *int) error` and friends,
//! over `type Args struct { A, B int }`. Field names are Go's on the wire (`A`, `B`), so JSON
//! bodies match what a Go `jsonrpc` peer would send.

#![allow(dead_code, unreachable_pub)] // included by path; each example uses part of it

use netrpc::{service, ServiceError};
use serde::{Deserialize, Serialize};

/// The arguments of every `Arith` method (Go: `type Args struct { A, B int }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Args {
    /// First operand.
    pub a: i64,
    /// Second operand.
    pub b: i64,
}

/// The reply of `Arith.Divide` (Go: `type Quotient struct { Quo, Rem int }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Quotient {
    /// `A / B`.
    pub quo: i64,
    /// `A % B`.
    pub rem: i64,
}

service! {
    /// Integer arithmetic, as in Go's `net/rpc` tutorials.
    pub trait Arith {
        const NAME = "Arith";
        type Server = ArithServer;
        type Client = ArithClient;

        /// Returns `A * B`.
        #[rpc(name = "Multiply", go = multiply_go, const = MULTIPLY)]
        fn multiply(args: Args) -> i64;
        /// Returns `A + B`.
        #[rpc(name = "Sum", go = sum_go, const = SUM)]
        fn sum(args: Args) -> i64;
        /// Returns `A / B` and `A % B`; a zero `B` is the method's own error.
        #[rpc(name = "Divide", go = divide_go, const = DIVIDE)]
        fn divide(args: Args) -> Quotient;
    }
}

/// The tutorials' implementation (Go: `type Arith int`). Checked arithmetic, so a hostile
/// caller cannot make the server panic with an overflow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Calculator;

impl Arith for Calculator {
    fn multiply(&self, args: Args) -> Result<i64, ServiceError> {
        args.a
            .checked_mul(args.b)
            .ok_or_else(|| ServiceError::new("multiplication overflows i64"))
    }

    fn sum(&self, args: Args) -> Result<i64, ServiceError> {
        args.a
            .checked_add(args.b)
            .ok_or_else(|| ServiceError::new("sum overflows i64"))
    }

    fn divide(&self, args: Args) -> Result<Quotient, ServiceError> {
        if args.b == 0 {
            return Err(ServiceError::new("divide by zero"));
        }
        match (args.a.checked_div(args.b), args.a.checked_rem(args.b)) {
            (Some(quo), Some(rem)) => Ok(Quotient { quo, rem }),
            _ => Err(ServiceError::new("division overflows i64")),
        }
    }
}
