//! The service manager's notification protocol (sd_notify(3)): a datagram with `KEY=value`
//! lines to the socket `$NOTIFY_SOCKET` names, when there is one. `READY=1` once every portal
//! listens (and saved reservations are back, which happens before), `RELOADING=1` / `READY=1`
//! around a SIGHUP reload, `STOPPING=1` at shutdown. Without `$NOTIFY_SOCKET` nothing happens.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The first directory systemd gives in `$var` (`$STATE_DIRECTORY`, `$RUNTIME_DIRECTORY`: a
/// colon-separated list when several are configured), if any.
pub fn directory(var: &str) -> Option<PathBuf> {
    let v = std::env::var_os(var).filter(|v| !v.is_empty())?;
    let first = v.to_string_lossy().split(':').next()?.to_string();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// Send `state` (newline-separated assignments) to the service manager, if one listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let p = path.to_string_lossy();
        match p.strip_prefix('@') {
            // Linux's abstract namespace.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), &*path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!("cannot notify the service manager ({state:?}): {e}");
    }
}

/// The monotonic clock in microseconds, as `RELOADING=1` wants it (`MONOTONIC_USEC`).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}
