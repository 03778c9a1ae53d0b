//! A netlink connection bound to one network namespace. The per-object operations live in
//! `link`, `addr`, `route` and `neigh`; this file holds the connection and error plumbing.

use std::sync::Arc;

use futures::TryStreamExt;

use crate::error::{Error, NetlinkFailure, Result};

/// A route-netlink connection opened in one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    pub(crate) handle: rtnetlink::Handle,
    pub(crate) netns: String,
    /// The task running the socket: it ends when a send or receive on the socket fails, and
    /// every request after that fails too.
    conn: Arc<tokio::task::JoinHandle<()>>,
}

impl Netlink {
    /// Sends `msg` with the header `flags` (what rtnetlink's builders do not offer, such as
    /// a route added without `NLM_F_EXCL`) and waits for the kernel's answer.
    pub(crate) async fn request_acked(
        &self,
        msg: netlink_packet_route::RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<(), rtnetlink::Error> {
        use futures::StreamExt;
        let mut req = netlink_packet_core::NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req)?;
        while let Some(m) = resp.next().await {
            if let netlink_packet_core::NetlinkPayload::Error(err) = m.payload
                && err.code.is_some()
            {
                return Err(rtnetlink::Error::NetlinkError(err));
            }
        }
        Ok(())
    }

    /// Opens a connection in the calling thread's namespace; `netns` labels error messages.
    /// Must be called inside a tokio runtime (the connection runs as a task on it).
    pub fn connect(netns: &str) -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::io("opening netlink socket in netns", netns, e))?;
        let conn = Arc::new(tokio::spawn(conn));
        Ok(Netlink {
            handle,
            netns: netns.to_string(),
            conn,
        })
    }

    /// Whether the connection has ended (a failed socket operation, or [`Self::close`]).
    pub fn is_closed(&self) -> bool {
        self.conn.is_finished()
    }

    /// Ends the connection: later requests on this handle and its clones fail.
    pub fn close(&self) {
        self.conn.abort();
    }

    /// Opens a new connection in the calling thread's namespace if this one has ended, so a
    /// long-lived user (the agent) is not left failing every request for good. Returns
    /// whether it reopened.
    pub fn reopen_if_closed(&mut self) -> Result<bool> {
        if !self.is_closed() {
            return Ok(false);
        }
        *self = Netlink::connect(&self.netns)?;
        Ok(true)
    }

    /// The namespace label used in error messages.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The raw rtnetlink handle, for the rare request netkit does not wrap.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    pub(crate) fn err(
        &self,
        op: &'static str,
        object: impl Into<String>,
        e: impl Into<NetlinkFailure>,
    ) -> Error {
        Error::Netlink {
            op,
            object: object.into(),
            netns: self.netns.clone(),
            cause: e.into(),
        }
    }

    pub(crate) fn not_found(&self, kind: &'static str, name: impl Into<String>) -> Error {
        Error::NotFound {
            kind,
            name: name.into(),
            netns: self.netns.clone(),
        }
    }
}

/// Collects a dump stream, treating "no such object" as an empty answer.
pub(crate) async fn collect_dump<T, S>(stream: S) -> std::result::Result<Vec<T>, rtnetlink::Error>
where
    S: futures::Stream<Item = std::result::Result<T, rtnetlink::Error>>,
{
    match stream.try_collect::<Vec<T>>().await {
        Ok(v) => Ok(v),
        Err(rtnetlink::Error::NetlinkError(m))
            if matches!(m.raw_code().abs(), libc::ENODEV | libc::ENOENT) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// True when an rtnetlink error carries the given errno.
pub(crate) fn has_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno)
}
