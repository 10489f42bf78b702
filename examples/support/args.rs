//! A tiny command-line flag reader for the examples: `--name value` pairs, bare `--switch`es
//! and `--help`.
//! (The examples avoid a dependency on an argument-parsing crate.)

#![allow(dead_code, unreachable_pub)] // included by path; each example uses part of it

use std::collections::HashMap;
use std::error::Error;
use std::str::FromStr;

/// Parsed `--name value` flags.
#[derive(Debug)]
pub struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    /// Reads the process arguments. Prints `usage` and exits 0 on `--help`.
    pub fn parse(usage: &str) -> Result<Flags, Box<dyn Error>> {
        Flags::from_args(std::env::args().skip(1), usage)
    }

    /// Reads `args` (without the program name).
    pub fn from_args(
        args: impl IntoIterator<Item = String>,
        usage: &str,
    ) -> Result<Flags, Box<dyn Error>> {
        let mut values = HashMap::new();
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument `{arg}`\n\n{usage}").into());
            };
            // A flag followed by another flag (or by nothing) is a switch.
            let value = match args.peek() {
                Some(next) if !next.starts_with("--") => args.next().unwrap_or_default(),
                _ => String::new(),
            };
            values.insert(name.to_owned(), value);
        }
        Ok(Flags { values })
    }

    /// The value of `--name`, parsed, or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, Box<dyn Error>>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|err| format!("bad value `{raw}` for --{name}: {err}").into()),
        }
    }

    /// True if `--name` was given (as a bare switch or with a value).
    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The value of `--name`, if given.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Refuses any flag not in `known`: a mistyped flag, or one this version of the tool
    /// does not have, must not run with its defaults as if it had been understood.
    pub fn only(&self, known: &[&str]) -> Result<(), Box<dyn Error>> {
        let mut unknown: Vec<&str> = self
            .values
            .keys()
            .map(String::as_str)
            .filter(|name| !known.contains(name))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort_unstable();
        Err(format!("unknown flag(s): --{}", unknown.join(", --")).into())
    }
}
