//! Netlink connections bound to a network namespace.
//!
//! A netlink socket stays attached to the namespace it was created in, whatever thread
//! later uses it. So to work on another namespace we only need to *create* the socket
//! there: a dedicated OS thread enters the target namespace, opens the socket, and
//! switches back (a guard restores the original namespace even on an early return or a
//! panic). The thread then ends. A tokio worker thread never changes namespace: in a
//! resident agent, a worker left in the wrong namespace would silently run every later
//! task there.
//!
//! On a VM the agent already runs inside the namespace it manages and uses [`connect`].
//! Tests, and the local provider's tooling, use [`connect_in`] to drive a namespace
//! from the outside.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::Handle;

/// The connection half of a netlink pair: a future the caller must spawn on tokio
/// (`tokio::spawn(connection)`) for the [`Handle`] to get answers.
pub type NetlinkConnection = rtnetlink::proto::Connection<RouteNetlinkMessage>;

/// The current thread's own network namespace. `/proc/self` would name the main
/// thread's, which is not necessarily ours.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Failure to open a netlink connection.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// Namespace path, e.g. `/run/netns/X`.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `setns` into the target failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// Namespace path.
        path: PathBuf,
        /// Cause.
        source: nix::Error,
    },
    /// `setns` back into the original namespace failed. The socket is discarded and the
    /// thread that failed to switch back ends; no other thread was affected.
    #[error("cannot return from network namespace {path} to the original one: {source}")]
    Restore {
        /// Namespace path.
        path: PathBuf,
        /// Cause.
        source: nix::Error,
    },
    /// The netlink socket could not be created.
    #[error("cannot open a netlink socket in {namespace}: {source}")]
    Socket {
        /// Namespace path, or `the current namespace`.
        namespace: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Called outside a tokio runtime: the socket must register with one.
    #[error("no tokio runtime to drive a netlink socket for {namespace}")]
    NoRuntime {
        /// Namespace path, or `the current namespace`.
        namespace: String,
    },
    /// The helper thread could not be started, or ended without an answer.
    #[error("the thread opening a netlink socket in {path} failed: {detail}")]
    Thread {
        /// Namespace path.
        path: PathBuf,
        /// What happened.
        detail: String,
    },
}

/// Opens an rtnetlink connection in the calling thread's current namespace. Must be
/// called inside a tokio runtime; spawn the returned connection on it.
pub fn connect() -> Result<(NetlinkConnection, Handle), NetnsError> {
    let namespace = "the current namespace".to_string();
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(NetnsError::NoRuntime { namespace });
    }
    new_connection(namespace)
}

/// Opens an rtnetlink connection whose socket lives in the network namespace at `path`
/// (e.g. `/run/netns/X`), without moving any tokio thread: see the module documentation.
/// Spawn the returned connection on tokio; the handle then acts on that namespace.
pub async fn connect_in(path: &Path) -> Result<(NetlinkConnection, Handle), NetnsError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetnsError::NoRuntime {
        namespace: path.display().to_string(),
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let target = path.to_path_buf();
    std::thread::Builder::new()
        .name("shoal-netns".to_string())
        .spawn(move || {
            // The socket registers with the runtime's reactor from this thread; the
            // reactor itself keeps running on the runtime's own threads.
            let _runtime = runtime.enter();
            // If the receiver is gone the caller stopped waiting; nothing to report to.
            let _ = tx.send(open_in(&target));
        })
        .map_err(|e| NetnsError::Thread {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    rx.await.map_err(|_| NetnsError::Thread {
        path: path.to_path_buf(),
        detail: "it ended without an answer".to_string(),
    })?
}

/// Runs on the dedicated thread: enter, open the socket, return.
fn open_in(path: &Path) -> Result<(NetlinkConnection, Handle), NetnsError> {
    let target = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let guard = NetnsGuard::enter(&target, path)?;
    let opened = new_connection(path.display().to_string());
    // Switch back before handing the socket out; a failure to do so is reported (the
    // socket itself would be fine, but this thread must not pretend all went well).
    guard.restore()?;
    opened
}

/// Opens an rtnetlink connection in the calling thread's current namespace that is
/// also a member of the multicast `groups` (`RTMGRP_*` bits, e.g. links and
/// neighbours): the kernel then sends it every matching change, made by anyone, on the
/// returned receiver. Must be called inside a tokio runtime; spawn the connection.
pub fn subscribe(
    groups: u32,
) -> Result<
    (
        NetlinkConnection,
        impl futures_util::Stream<Item = (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)> + Unpin,
    ),
    NetnsError,
> {
    let namespace = "the current namespace".to_string();
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(NetnsError::NoRuntime { namespace });
    }
    let (mut connection, _handle, notifications) =
        rtnetlink::new_connection().map_err(|source| NetnsError::Socket {
            namespace: namespace.clone(),
            source,
        })?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(|source| NetnsError::Socket { namespace, source })?;
    Ok((connection, notifications))
}

fn new_connection(namespace: String) -> Result<(NetlinkConnection, Handle), NetnsError> {
    // Unsolicited messages are not used (no multicast groups joined): drop their channel.
    let (connection, handle, _unsolicited) =
        rtnetlink::new_connection().map_err(|source| NetnsError::Socket { namespace, source })?;
    Ok((connection, handle))
}

/// Holds the thread in a target namespace and brings it back to the original one when
/// dropped (or earlier, through [`NetnsGuard::restore`], which reports failure).
struct NetnsGuard {
    original: File,
    path: PathBuf,
    restored: bool,
}

impl NetnsGuard {
    fn enter(target: &File, path: &Path) -> Result<NetnsGuard, NetnsError> {
        let original = File::open(THREAD_NETNS).map_err(|source| NetnsError::Open {
            path: PathBuf::from(THREAD_NETNS),
            source,
        })?;
        setns(target, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(NetnsGuard {
            original,
            path: path.to_path_buf(),
            restored: false,
        })
    }

    fn restore(mut self) -> Result<(), NetnsError> {
        self.restored = true;
        setns(&self.original, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Restore {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if !self.restored {
            if let Err(e) = setns(&self.original, CloneFlags::CLONE_NEWNET) {
                tracing::error!(
                    namespace = %self.path.display(),
                    "cannot return to the original network namespace: {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_outside_a_runtime_is_refused() {
        assert!(matches!(connect(), Err(NetnsError::NoRuntime { .. })));
    }

    #[tokio::test]
    async fn a_missing_namespace_is_named_in_the_error() {
        let path = Path::new("/run/netns/shoal-no-such-namespace");
        let err = connect_in(path).await.err().expect("no such namespace");
        assert!(matches!(err, NetnsError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("shoal-no-such-namespace"), "{err}");
    }
}
