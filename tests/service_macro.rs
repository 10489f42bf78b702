//! The `service!` macro with method names that other items also carry: the methods of `Arc`
//! (`clone`, `as_ref`, `to_owned`, `into`), `drop`, and the typed client's private helper
//! before it became a function of the crate (`full_name`). Each must compile and dispatch to
//! its own method. One method also carries an attribute after its `#[rpc(...)]`, and one is a raw
//! identifier (`r#type`) with its wire name given. And methods
//! compiled in and out with `#[cfg]`, and a trait, and an argument type, named `T` (the name
//! the generated server's type parameter had). A service with two methods under one wire name
//! is refused at registration.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use netrpc::{service, RpcError, ServiceError};
use util::TestServer;

service! {
    /// Methods named like common trait methods.
    pub trait Names {
        const NAME = "Names";
        type Server = NamesServer;
        type Client = NamesClient;

        /// Adds its own amount.
        #[rpc(name = "Clone", go = clone_go, const = CLONE)]
        fn clone(args: u8) -> u8;
        /// Adds its own amount.
        #[rpc(go = as_ref_go, const = AS_REF)]
        fn as_ref(args: u8) -> u8;
        /// Adds its own amount.
        #[rpc(go = to_owned_go, const = TO_OWNED)]
        fn to_owned(args: u8) -> u8;
        /// Adds its own amount.
        #[rpc(go = into_go, const = INTO)]
        fn into(args: u8) -> u8;
        /// Adds its own amount.
        #[rpc(go = drop_go, const = DROP)]
        fn drop(args: u8) -> u8;
        /// Adds its own amount.
        #[rpc(go = full_name_go, const = FULL_NAME)]
        #[allow(clippy::needless_pass_by_value)]
        /// Attributes and more docs may follow `#[rpc(...)]`.
        fn full_name(args: u8) -> u8;
        /// Adds its own amount; a raw identifier, so its wire name is given (without it,
        /// the macro refuses to compile: see its documentation's `compile_fail` example).
        #[rpc(name = "type", go = type_go, const = TYPE)]
        fn r#type(args: u8) -> u8;
    }
}

/// Adds a different amount in each method, so a call reaching the wrong one shows.
struct Adder;

impl Names for Adder {
    fn clone(&self, args: u8) -> Result<u8, ServiceError> {
        Ok(args + 1)
    }
    fn as_ref(&self, args: u8) -> Result<u8, ServiceError> {
        Ok(args + 2)
    }
    fn to_owned(&self, args: u8) -> Result<u8, ServiceError> {
        Ok(args + 3)
    }
    fn into(&self, args: u8) -> Result<u8, ServiceError> {
        Ok(args + 4)
    }
    fn drop(&self, args: u8) -> Result<u8, ServiceError> {
        Ok(args + 5)
    }
    fn full_name(&self, args: u8) -> Result<u8, ServiceError> {
        Ok(args + 6)
    }
    fn r#type(&self, args: u8) -> Result<u8, ServiceError> {
        Ok(args + 7)
    }
}

#[test]
fn methods_named_like_trait_methods_compile_and_reach_their_own_handler() {
    let server = TestServer::start();
    server.server.register(NamesServer::new(Adder)).unwrap();
    let names = NamesClient::new(server.client());
    assert_eq!(names.clone(&10).unwrap(), 11);
    assert_eq!(names.as_ref(&10).unwrap(), 12);
    assert_eq!(names.to_owned(&10).unwrap(), 13);
    // `names.into(..)` would find `Into::into` (it takes `self`, which method lookup tries
    // before `&self`): a client method named like a by-value trait method needs a path.
    assert_eq!(NamesClient::into(&names, &10).unwrap(), 14);
    assert_eq!(names.drop(&10).unwrap(), 15);
    assert_eq!(names.full_name(&10).unwrap(), 16);
    assert_eq!(names.full_name_go(&20).wait().unwrap(), 26);
    assert_eq!(NamesClient::CLONE, "Names.Clone");
    assert_eq!(NamesClient::AS_REF, "Names.as_ref");
    assert_eq!(names.r#type(&10).unwrap(), 17);
    assert_eq!(NamesClient::TYPE, "Names.type");
    let untyped: u8 = names.client().call("Names.type", &30u8).unwrap();
    assert_eq!(untyped, 37);
}

service! {
    /// A method always compiled in and one never, by `#[cfg]`.
    pub trait Gated {
        const NAME = "Gated";
        type Server = GatedServer;
        type Client = GatedClient;

        /// Always there.
        #[cfg(all())]
        #[rpc(name = "Kept", go = kept_go, const = KEPT)]
        fn kept(args: u8) -> u8;
        /// Never there: no trait method to implement, no table entry, no client method.
        #[cfg(any())]
        #[rpc(name = "Gone", go = gone_go, const = GONE)]
        fn gone(args: u8) -> u8;
    }
}

/// Implements only the method compiled in: the other is not in the trait.
struct OnlyKept;

impl Gated for OnlyKept {
    fn kept(&self, args: u8) -> Result<u8, ServiceError> {
        Ok(args + 1)
    }
}

#[test]
fn a_method_compiled_out_by_cfg_is_gone_from_the_trait_the_table_and_the_client() {
    let server = TestServer::start();
    server.server.register(GatedServer::new(OnlyKept)).unwrap();
    let gated = GatedClient::new(server.client());
    assert_eq!(gated.kept(&1).unwrap(), 2);
    assert_eq!(GatedClient::KEPT, "Gated.Kept");
    let gone = gated.client().call::<_, u8>("Gated.Gone", &1u8);
    assert!(
        matches!(gone, Err(RpcError::UnknownMethod { .. })),
        "{gone:?}"
    );
}

/// A service trait named `T`: the generated server's own type parameter must not be it.
mod trait_named_t {
    netrpc::service! {
        /// Named `T`.
        pub trait T {
            const NAME = "T";
            type Server = TServer;
            type Client = TClient;

            /// Adds one.
            #[rpc(go = succ_go, const = SUCC)]
            fn succ(args: u8) -> u8;
            /// Kept out of the build: its wire name may repeat another's.
            #[cfg(any())]
            #[rpc(name = "succ", go = again_go, const = AGAIN)]
            fn again(args: u8) -> u8;
        }
    }

    /// Implements `T`.
    pub(crate) struct Succ;

    impl T for Succ {
        fn succ(&self, args: u8) -> Result<u8, netrpc::ServiceError> {
            Ok(args + 1)
        }
    }
}

/// An argument type named `T`.
mod argument_named_t {
    /// A byte, named `T`.
    #[derive(serde::Serialize, serde::Deserialize)]
    pub(crate) struct T(pub(crate) u8);

    netrpc::service! {
        /// Takes a `T`.
        pub trait Unwrap {
            const NAME = "Unwrap";
            type Server = UnwrapServer;
            type Client = UnwrapClient;

            /// The byte inside.
            #[rpc(go = unwrap_go, const = UNWRAP)]
            fn unwrap(args: T) -> u8;
        }
    }

    /// Implements `Unwrap`.
    pub(crate) struct Inside;

    impl Unwrap for Inside {
        fn unwrap(&self, args: T) -> Result<u8, netrpc::ServiceError> {
            Ok(args.0)
        }
    }
}

#[test]
fn a_trait_or_an_argument_named_t_compiles_and_reaches_its_handler() {
    let server = TestServer::start();
    (server.server)
        .register(trait_named_t::TServer::new(trait_named_t::Succ))
        .unwrap();
    (server.server)
        .register(argument_named_t::UnwrapServer::new(
            argument_named_t::Inside,
        ))
        .unwrap();
    let t = trait_named_t::TClient::new(server.client());
    assert_eq!(t.succ(&1).unwrap(), 2);
    let unwrap = argument_named_t::UnwrapClient::new(server.client());
    assert_eq!(unwrap.unwrap(&argument_named_t::T(9)).unwrap(), 9);
}

service! {
    /// Two methods under one wire name, by mistake.
    pub trait Bank {
        const NAME = "Bank";
        type Server = BankServer;
        type Client = BankClient;

        /// Meant as `transfer` on the wire.
        #[rpc(name = "audit", go = transfer_go, const = TRANSFER)]
        fn transfer(args: u32) -> String;
        /// `audit` on the wire.
        #[rpc(go = audit_go, const = AUDIT)]
        fn audit(args: u32) -> String;
    }
}

/// Implements `Bank`.
struct Teller;

impl Bank for Teller {
    fn transfer(&self, args: u32) -> Result<String, ServiceError> {
        Ok(format!("transfer({args})"))
    }

    fn audit(&self, args: u32) -> Result<String, ServiceError> {
        Ok(format!("audit({args})"))
    }
}

#[test]
fn two_methods_under_one_wire_name_are_refused_at_registration() {
    // Registered, one table entry would serve both names' calls: `transfer`'s would run
    // `audit`.
    let server = netrpc::Server::new();
    let refused = server.register(BankServer::new(Teller)).unwrap_err();
    let RpcError::InvalidRegistration { detail } = &refused else {
        panic!("{refused:?}");
    };
    assert!(
        detail.contains("`Bank`") && detail.contains("`audit`"),
        "{detail}"
    );
}
