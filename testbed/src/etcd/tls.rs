//! Certificates for an etcd fixture that serves TLS and requires client certificates, made
//! with openssl: a CA, a server certificate for the member's IP and a client certificate.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};
use crate::process::run_tool;

/// A CA with a server and a client certificate it signed (PEM files).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// An EC P-256 key, unencrypted: fast to make and accepted by etcd and twilld.
const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl EtcdTls {
    /// Makes the CA and both certificates in `dir`, valid for a day; the server certificate
    /// names `server_ip`.
    pub fn generate(dir: &Path, server_ip: Ipv4Addr) -> Result<EtcdTls> {
        let mut ca = vec!["req", "-x509"];
        ca.extend(NEW_EC_KEY);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=twill-test-ca",
        ]);
        openssl(dir, &ca)?;
        for (name, ext) in [
            (
                "server",
                format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth,clientAuth\n"),
            ),
            ("client", "extendedKeyUsage=clientAuth\n".to_string()),
        ] {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let subj = format!("/CN=twill-{name}");
            let mut req = vec!["req"];
            req.extend(NEW_EC_KEY);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &req)?;
            let extfile = format!("{name}.ext");
            std::fs::write(dir.join(&extfile), ext).map_err(|e| {
                LabError::io("writing", dir.join(&extfile).display().to_string(), e)
            })?;
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "1",
                    "-extfile",
                    &extfile,
                ],
            )?;
        }
        Ok(EtcdTls {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        })
    }

    /// twilld's flags for the client side (`--etcd-cafile=…`, `--etcd-certfile=…`,
    /// `--etcd-keyfile=…`).
    pub fn twilld_flags(&self) -> Vec<String> {
        self.client_flags("--etcd-cafile", "--etcd-certfile", "--etcd-keyfile")
    }

    /// etcdctl's flags for the client side.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        self.client_flags("--cacert", "--cert", "--key")
    }

    fn client_flags(&self, ca: &str, cert: &str, key: &str) -> Vec<String> {
        vec![
            format!("{ca}={}", self.ca.display()),
            format!("{cert}={}", self.client_cert.display()),
            format!("{key}={}", self.client_key.display()),
        ]
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let mut c = Command::new("openssl");
    c.current_dir(dir).args(args);
    run_tool(&mut c, format!("openssl {}", args.join(" "))).map(drop)
}
