//! Throwaway TLS certificates made in-process with rcgen, for the TLS examples and tests: a
//! certificate authority, a server certificate for `localhost` and 127.0.0.1 signed by it,
//! and client certificates. Nothing is written to disk; every run makes new keys.

#![allow(dead_code, unreachable_pub)] // each example or test uses part of this file

use std::error::Error;

use netrpc::tls::{CertificateDer, PrivateKeyDer, RootCertStore};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate chain (leaf first) and its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The chain and key, as `tls::client_config` takes them.
    pub fn pair(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }
}

/// A certificate authority that signs server and client certificates.
pub struct Authority {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Self, Box<dyn Error>> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A root store trusting this CA alone.
    pub fn roots(&self) -> Result<RootCertStore, Box<dyn Error>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone())?;
        Ok(roots)
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Result<Identity, Box<dyn Error>> {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        self.leaf(
            names,
            "netrpc test server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> Result<Identity, Box<dyn Error>> {
        self.leaf(Vec::new(), name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        names: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Identity, Box<dyn Error>> {
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der())?,
        })
    }
}
