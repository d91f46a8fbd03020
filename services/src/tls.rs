//! TLS for the native protocol: certificates loaded or made, and the rustls configurations of
//! both ends.
//!
//! TLS is never optional. A broker given no certificate makes its own on first start: a CA
//! (`<data-dir>/tls/ca.pem`, the file clients trust) and a server certificate signed by it
//! for `localhost`, `127.0.0.1`, `::1` and the advertised host. Keeping the CA separate from
//! the server certificate means a client trusting `ca.pem` keeps working when the server
//! certificate is renewed. Only TLS 1.3 is offered: QUIC requires it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strata_proto::native::ALPN;

/// A certificate chain and its private key.
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

/// The crypto provider everything here uses (aws-lc-rs, the one quinn and sqlx build with).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a PEM private key from {}", path.display()))
}

/// Trust roots from a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{} holds an unusable CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// Where a broker keeps the certificates it makes.
pub struct TlsDir {
    dir: PathBuf,
}

impl TlsDir {
    /// `<data-dir>/tls`.
    pub fn new(data_dir: &Path) -> TlsDir {
        TlsDir {
            dir: data_dir.join("tls"),
        }
    }

    /// The CA certificate clients trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The secret behind QUIC stateless resets, made on first use and kept, so that a broker
    /// restarted after a crash can tell clients at once that their old connections are gone
    /// (instead of leaving them to time out).
    pub fn reset_secret(&self) -> Result<Vec<u8>> {
        let path = self.dir.join("reset.key");
        if let Ok(secret) = std::fs::read(&path)
            && secret.len() == 64
        {
            return Ok(secret);
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let mut secret = vec![0u8; 64];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| anyhow::anyhow!("no randomness"))?;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&secret))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(secret)
    }

    /// The server identity kept here, made (with its CA) on first use. `hosts` are extra
    /// names or addresses the certificate must cover, such as the advertised host.
    pub fn server_identity(&self, hosts: &[String]) -> Result<Identity> {
        if !self.server_cert().exists() || !self.server_key().exists() {
            self.generate(hosts)?;
        }
        Ok(Identity {
            chain: load_certs(&self.server_cert())?,
            key: load_key(&self.server_key())?,
        })
    }

    fn generate(&self, hosts: &[String]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let (ca_params, ca_key) = if self.ca_cert().exists() && self.ca_key().exists() {
            let key_pem = std::fs::read_to_string(self.ca_key())?;
            let key = KeyPair::from_pem(&key_pem).context("ca.key is not a usable key")?;
            (ca_params(), key)
        } else {
            let key = KeyPair::generate().context("cannot generate the CA key")?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&self.ca_key(), &key.serialize_pem())?;
            std::fs::write(self.ca_cert(), cert.pem())?;
            (ca_params(), key)
        };
        let issuer = Issuer::new(ca_params, ca_key);
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        for h in hosts {
            if !names.contains(h) && !h.is_empty() && h != "0.0.0.0" && h != "::" {
                names.push(h.clone());
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("strata broker");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().context("cannot generate the server key")?;
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&self.server_key(), &key.serialize_pem())?;
        std::fs::write(self.server_cert(), cert.pem())?;
        tracing::info!(
            ca = %self.ca_cert().display(),
            names = ?names,
            "made a CA and a server certificate for the QUIC listener; clients trust the CA"
        );
        Ok(())
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Strata");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("Strata local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The broker's TLS configuration: TLS 1.3, ALPN `strata/1`, and client certificates
/// required when `client_ca` is given.
pub fn server_config(identity: Identity, client_ca: Option<&Path>) -> Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(path) => {
            let roots = Arc::new(load_roots(path)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .context("cannot build the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.chain, identity.key)
        .context("the TLS certificate and key do not match or are unusable")?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A client's TLS configuration: trust `ca`, present `identity` if given (mutual TLS).
/// Session tickets are kept in memory, so reconnecting resumes the TLS session.
pub fn client_config(ca: &Path, identity: Option<Identity>) -> Result<rustls::ClientConfig> {
    let roots = load_roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .context("the client certificate and key do not match or are unusable")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The common name of a peer's leaf certificate: a client's identity under mutual TLS.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_certificates_are_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path());
        let first = tls.server_identity(&["broker.example".into()]).unwrap();
        assert!(tls.ca_cert().exists());
        let second = tls.server_identity(&[]).unwrap();
        assert_eq!(first.chain, second.chain, "the certificate is made once");
        assert_eq!(
            common_name(&first.chain[0]).as_deref(),
            Some("strata broker")
        );
        server_config(second, None).unwrap();
        client_config(&tls.ca_cert(), None).unwrap();
    }
}
