//! The `service!` macro: one service definition becomes a server trait, a dispatch table and a
//! typed client, with no reflection and no proc-macro crate.

/// Defines a service: a server trait, a registrable server type, a typed client, and the
/// `"Service.Method"` name constants, from one definition.
///
/// # Input
///
/// ```text
/// service! {
///     /// docs and attributes of the trait
///     pub trait Arith {                       // visibility and trait name
///         const NAME = "Arith";               // service name on the wire
///         type Server = ArithServer;          // generated server type
///         type Client = ArithClient;          // generated client type
///
///         /// docs of the method
///         #[rpc(name = "Multiply", go = multiply_go, const = MULTIPLY)]
///         fn multiply(args: Args) -> i64;     // one argument type, one reply type (Go's rule)
///     }
/// }
/// ```
///
/// `name = "..."` is optional: without it the wire name is the Rust method name. Set it to
/// match Go services (`Arith.Multiply`). `go` and `const` name the generated non-blocking
/// client method and name constant (`macro_rules!` cannot derive new names, so you choose).
///
/// Any method name works (`clone`, `into`, `drop` included: the table calls the trait's
/// method by its full path; a client method named like a by-value trait method such as
/// `into` is then called with a path, `ArithClient::into(&client, &args)`, since method
/// syntax finds the trait's first), except the typed client's own `new`, `with_service_name` and
/// `client`: give such a method another Rust name and its wire name with `name = "New"`. A
/// raw identifier (`r#type`) needs `name = "type"` too: without it, a compile error says so
/// (its Rust name, `r#type`, is no wire name).
/// Only doc comments, then `#[cfg(...)]`, may precede `#[rpc(...)]` on a method; other
/// attributes (`#[allow]`, `#[deprecated]`, more docs) follow it, and go on the trait method
/// and both client methods. A `#[cfg]` (before `#[rpc]`) compiles the method out of the
/// trait, the method table, the client and its name constant alike: a server built without
/// it answers its name `UnknownMethod`. Two methods compiled in under one wire name (a
/// `name = "..."` repeating another method's) make [`Server::register`](crate::Server::register)
/// refuse the service with [`RpcError::InvalidRegistration`](crate::RpcError) naming it.
/// `NetrpcImpl`, the generated server's type parameter, is the one name an argument or
/// reply type may not have.
///
/// # What it generates
///
/// For the input above:
///
/// - `pub trait Arith: Send + Sync + 'static` with
///   `fn multiply(&self, args: Args) -> Result<i64, ServiceError>`: implement it for your type.
/// - `pub struct ArithServer<NetrpcImpl: Arith>` with `ArithServer::new(impl)`, which implements
///   [`Service`](crate::Service): `Service::NAME` is `"Arith"`, and its method table maps
///   `"Multiply"` to a monomorphic closure that decodes `Args`, calls `multiply` and encodes
///   the `i64`. Register it with `server.register(ArithServer::new(impl))`.
/// - `pub struct ArithClient` wrapping a [`Client`](crate::Client):
///   `ArithClient::new(client)`, `ArithClient::with_service_name(client, "Calc")` for a
///   service registered under another name, `client()`, and per method
///   `multiply(&self, &Args) -> Result<i64, RpcError>` (blocking, like `Client::call`) and
///   `multiply_go(&self, &Args) -> Call<i64>` (like `Client::go`).
/// - Constants `ArithClient::SERVICE_NAME` (`"Arith"`) and `ArithClient::MULTIPLY`
///   (`"Arith.Multiply"`), usable with the untyped `Client::call`.
///
/// # Examples
///
/// ```
/// use rpc_core::{service, Client, Server, ServiceError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Args { pub a: i64, pub b: i64 }
///
/// service! {
///     /// Integer arithmetic, as in Go's net/rpc tutorials.
///     pub trait Arith {
///         const NAME = "Arith";
///         type Server = ArithServer;
///         type Client = ArithClient;
///
///         /// Returns `a * b`.
///         #[rpc(name = "Multiply", go = multiply_go, const = MULTIPLY)]
///         fn multiply(args: Args) -> i64;
///         /// Returns `a / b`, or an error for a zero divisor.
///         #[rpc(name = "Divide", go = divide_go, const = DIVIDE)]
///         fn divide(args: Args) -> i64;
///     }
/// }
///
/// struct Calculator;
///
/// impl Arith for Calculator {
///     fn multiply(&self, args: Args) -> Result<i64, ServiceError> {
///         Ok(args.a * args.b)
///     }
///     fn divide(&self, args: Args) -> Result<i64, ServiceError> {
///         if args.b == 0 {
///             return Err("divide by zero".into());
///         }
///         Ok(args.a / args.b)
///     }
/// }
///
/// let server = Server::new();
/// server.register(ArithServer::new(Calculator))?;
/// let running = server.serve("127.0.0.1:0")?;
///
/// let arith = ArithClient::new(Client::dial(running.local_addr())?);
/// assert_eq!(arith.multiply(&Args { a: 7, b: 8 })?, 56);
/// assert_eq!(arith.divide_go(&Args { a: 9, b: 3 }).wait()?, 3);
/// assert!(arith.divide(&Args { a: 1, b: 0 }).unwrap_err().is_method_error());
/// let untyped: i64 = arith.client().call(ArithClient::MULTIPLY, &Args { a: 2, b: 3 })?;
/// assert_eq!(untyped, 6);
/// # Ok::<(), rpc_core::RpcError>(())
/// ```
///
/// Malformed input is a compile error that says what was expected:
///
/// ```compile_fail
/// rpc_core::service! {
///     pub trait Empty {
///         const NAME = "Empty";
///         type Server = EmptyServer;
///         type Client = EmptyClient;
///     }
/// }
/// ```
///
/// ```compile_fail
/// rpc_core::service! {
///     pub trait Arith {
///         const NAME = "Arith";
///         type Server = ArithServer;
///         type Client = ArithClient;
///         // two arguments: Go's rule is one argument type, so wrap them in a struct
///         #[rpc(go = add_go, const = ADD)]
///         fn add(a: i64, b: i64) -> i64;
///     }
/// }
/// ```
///
/// ```compile_fail
/// rpc_core::service! {
///     pub trait Lexer {
///         const NAME = "Lexer";
///         type Server = LexerServer;
///         type Client = LexerClient;
///         // a raw identifier needs its wire name: `#[rpc(name = "type", ...)]`
///         #[rpc(go = type_go, const = TYPE)]
///         fn r#type(text: String) -> String;
///     }
/// }
/// ```
///
/// ```compile_fail
/// rpc_core::service! {
///     pub trait Arith {
///         type Server = ArithServer;   // `const NAME = "...";` is missing
///         type Client = ArithClient;
///         #[rpc(go = add_go, const = ADD)]
///         fn add(args: (i64, i64)) -> i64;
///     }
/// }
/// ```
#[macro_export]
macro_rules! service {
    // The one accepted form.
    (
        $(#[$trait_attr:meta])*
        $vis:vis trait $trait_name:ident {
            const NAME = $service_name:literal;
            type Server = $server:ident;
            type Client = $client:ident;
            $(
                $(#[doc = $method_doc:literal])*
                $(#[cfg($method_cfg:meta)])*
                #[rpc($(name = $wire:literal,)? go = $go:ident, const = $const_name:ident)]
                $(#[$method_attr:meta])*
                fn $method:ident($arg_name:ident : $arg:ty) -> $reply:ty;
            )+
        }
    ) => {
        $crate::service!(@trait
            [$(#[$trait_attr])*] $vis $trait_name
            $( [$(#[doc = $method_doc])* $(#[cfg($method_cfg)])* $(#[$method_attr])*]
                $method $arg_name $arg, $reply; )+
        );
        $crate::service!(@server
            $vis $trait_name $service_name $server
            $( [$(#[cfg($method_cfg)])*] $method [$($wire)?] $arg; )+
        );
        $crate::service!(@client
            [$vis] $service_name $client
            $( [$(#[cfg($method_cfg)])*]
                [$(#[doc = $method_doc])* $(#[cfg($method_cfg)])* $(#[$method_attr])*]
                $method $go $const_name [$($wire)?] $arg, $reply; )+
        );
    };

    // A definition without methods.
    (
        $(#[$trait_attr:meta])*
        $vis:vis trait $trait_name:ident {
            const NAME = $service_name:literal;
            type Server = $server:ident;
            type Client = $client:ident;
        }
    ) => {
        ::core::compile_error!(concat!(
            "service!: `", stringify!($trait_name), "` has no methods; add at least one ",
            "`#[rpc(go = name_go, const = NAME)] fn name(args: Args) -> Reply;`"
        ));
    };

    // The server trait: one method per RPC, returning the reply or the method's own error.
    (@trait [$($trait_attr:tt)*] $vis:vis $trait_name:ident
        $( [$($doc:tt)*] $method:ident $arg_name:ident $arg:ty, $reply:ty; )+
    ) => {
        $($trait_attr)*
        $vis trait $trait_name: ::core::marker::Send + ::core::marker::Sync + 'static {
            $(
                $($doc)*
                fn $method(&self, $arg_name: $arg) -> ::core::result::Result<$reply, $crate::ServiceError>;
            )+
        }
    };

    // The server type: wraps an implementation and builds its dispatch table.
    (@server $vis:vis $trait_name:ident $service_name:literal $server:ident
        $( [$($cfg:tt)*] $method:ident [$($wire:literal)?] $arg:ty; )+
    ) => {
        #[doc = concat!("Serves a `", stringify!($trait_name), "` implementation as service `",
            $service_name, "`; register it with `Server::register`.")]
        // The implementation's type parameter has a name no user type takes: `macro_rules!`
        // hygiene does not cover type names, so a trait or type the user named `T` would
        // be taken for it.
        #[derive(Debug)]
        $vis struct $server<NetrpcImpl> {
            service: NetrpcImpl,
        }

        impl<NetrpcImpl: $trait_name> $server<NetrpcImpl> {
            #[doc = concat!("Wraps `service` for registration.")]
            $vis fn new(service: NetrpcImpl) -> Self {
                $server { service }
            }
        }

        impl<NetrpcImpl: $trait_name> $crate::Service for $server<NetrpcImpl> {
            const NAME: &'static str = $service_name;

            fn into_method_table(self) -> $crate::MethodTable {
                let service = ::std::sync::Arc::new(self.service);
                let mut table = $crate::MethodTable::new();
                $(
                    // A method compiled out (`#[cfg]`) has no entry either.
                    $($cfg)*
                    {
                        $crate::service!(@not_raw $method $($wire)?);
                        let shared = ::std::sync::Arc::clone(&service);
                        // Two methods under one wire name make `Server::register` refuse the
                        // service, rather than one method's calls run the other.
                        $crate::macro_support::add_method(
                            &mut table,
                            $crate::service!(@wire $method $($wire)?),
                            // Called through the trait: `Arc` has `clone`, `as_ref` and others
                            // that a method of the same name must not reach.
                            move |args: $arg| {
                                <NetrpcImpl as $trait_name>::$method(&*shared, args)
                            },
                        );
                    }
                )+
                table
            }
        }
    };

    // The typed client: a blocking and a `go` method per RPC, and the name constants.
    (@client [$vis:vis] $service_name:literal $client:ident
        $( [$($cfg:tt)*] [$($doc:tt)*]
            $method:ident $go:ident $const_name:ident [$($wire:literal)?] $arg:ty, $reply:ty; )+
    ) => {
        #[doc = concat!("Typed client of service `", $service_name, "`.")]
        #[derive(Debug, Clone)]
        $vis struct $client {
            client: $crate::Client,
            /// Set when the service was registered under another name.
            service_name: ::core::option::Option<::std::string::String>,
        }

        impl $client {
            #[doc = concat!("The service name on the wire: `", $service_name, "`.")]
            $vis const SERVICE_NAME: &'static str = $service_name;
            $(
                #[doc = concat!("Full name of `", stringify!($method), "` on the wire.")]
                $($cfg)*
                $vis const $const_name: &'static str =
                    concat!($service_name, ".", $crate::service!(@wire $method $($wire)?));
            )+

            #[doc = concat!("Calls service `", $service_name, "` through `client`.")]
            $vis fn new(client: $crate::Client) -> Self {
                $client { client, service_name: None }
            }

            /// Calls the service registered under `name` (Go: `RegisterName`) through `client`.
            $vis fn with_service_name(client: $crate::Client, name: &str) -> Self {
                $client { client, service_name: Some(name.to_owned()) }
            }

            /// The untyped client underneath.
            $vis fn client(&self) -> &$crate::Client {
                &self.client
            }

            $(
                $($doc)*
                ///
                /// Blocks until the reply (see `Client::call`).
                ///
                /// # Errors
                ///
                /// Any `RpcError`; the method's own error is `RpcError::Method`.
                $vis fn $method(&self, args: &$arg) -> ::core::result::Result<$reply, $crate::RpcError> {
                    let wire = $crate::service!(@wire $method $($wire)?);
                    let name = $crate::macro_support::full_name(&self.service_name, Self::$const_name, wire);
                    self.client.call(&name, args)
                }

                $($doc)*
                ///
                /// Returns at once; the result arrives on the `Call` (see `Client::go`).
                $vis fn $go(&self, args: &$arg) -> $crate::Call<$reply> {
                    let wire = $crate::service!(@wire $method $($wire)?);
                    let name = $crate::macro_support::full_name(&self.service_name, Self::$const_name, wire);
                    self.client.go(&name, args)
                }
            )+
        }
    };

    // The wire name of a method: given, or the Rust name.
    (@wire $method:ident $wire:literal) => { $wire };
    (@wire $method:ident) => { stringify!($method) };

    // A raw identifier's Rust name is no wire name (`stringify!` keeps its `r#`), and
    // `concat!` cannot strip it: without `name = "..."`, a compile error says so.
    (@not_raw $method:ident $wire:literal) => {};
    (@not_raw $method:ident) => {
        const _: () = ::core::assert!(
            !$crate::macro_support::is_raw_identifier(stringify!($method)),
            concat!("service!: `", stringify!($method), "` is a raw identifier; give its wire ",
                "name with `#[rpc(name = \"...\", ...)]`")
        );
    };

    // Anything else.
    ($($anything:tt)*) => {
        ::core::compile_error!(concat!(
            "service!: expected `pub trait Name { const NAME = \"Name\"; type Server = NameServer; ",
            "type Client = NameClient; #[rpc(name = \"Method\", go = method_go, const = METHOD)] ",
            "fn method(args: Args) -> Reply; ... }` (one argument, one reply per method)"
        ));
    };
}
