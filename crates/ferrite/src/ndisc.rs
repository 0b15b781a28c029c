//! Unsolicited neighbour advertisements (RFC 4861 §7.2.6): what gratuitous ARP is to a
//! floating IPv4 portal, this is to a floating IPv6 one. When a node takes an address over,
//! its peers still have the previous holder's link-layer address in their neighbour caches and
//! would keep sending there until neighbour unreachability detection gives up on it (about
//! 35 s with Linux's defaults: REACHABLE, then DELAY, then unicast probes). An advertisement to
//! all nodes (ff02::1) with the Override flag and this interface's link-layer address makes
//! every peer that has an entry for the address use this node at once (§7.2.5); peers without
//! an entry are not made to create one (§7.2.6), they resolve the address when they need it.
//!
//! One packet on a raw ICMPv6 socket (needs CAP_NET_RAW, as arping does). The kernel fills the
//! ICMPv6 checksum (RFC 3542 §3.1); the hop limit is 255, which receivers require (§7.1.2).

use std::ffi::CString;
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// ICMPv6 type of a Neighbor Advertisement (RFC 4861 §4.4).
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// The Override flag, first byte of the flags word (§4.4: R S O, then reserved bits).
const OVERRIDE: u8 = 0x20;
/// Option type Target Link-Layer Address (§4.6.1).
const TARGET_LINK_LAYER_ADDRESS: u8 = 2;

/// The advertisement for `target` owned by link-layer address `mac`: header, target, and one
/// Target Link-Layer Address option (8 bytes: type, length in units of 8 bytes, address).
/// Solicited is clear, as it must be for an unsolicited one (§7.2.6); the checksum is left 0
/// for the kernel.
pub fn advertisement(target: Ipv6Addr, mac: [u8; 6]) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = NEIGHBOR_ADVERTISEMENT;
    p[4] = OVERRIDE;
    p[8..24].copy_from_slice(&target.octets());
    p[24] = TARGET_LINK_LAYER_ADDRESS;
    p[25] = 1;
    p[26..32].copy_from_slice(&mac);
    p
}

/// Advertise `target` (an address of `interface`, brought up without duplicate address
/// detection) to all nodes on `interface`, from `target` itself.
pub fn advertise(interface: &str, target: Ipv6Addr) -> io::Result<()> {
    let name = CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
    // SAFETY: a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket(2) just returned, owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mac = link_layer_address(&sock, &name)?;
    set_int(&sock, libc::IPV6_MULTICAST_HOPS, 255)?;
    set_int(&sock, libc::IPV6_MULTICAST_IF, index as libc::c_int)?;
    set_int(&sock, libc::IPV6_MULTICAST_LOOP, 0)?;
    // From the address advertised, as a gratuitous ARP is from its own address.
    let from = sockaddr(target, 0);
    // SAFETY: a valid sockaddr_in6 of the length given, on a descriptor we own.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&from as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let packet = advertisement(target, mac);
    let to = sockaddr(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), index);
    // SAFETY: sends `packet` (ours, of the length given) to a valid sockaddr_in6.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&to as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(ip: Ipv6Addr, scope: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all zeroes is a valid value of it.
    let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    a.sin6_addr.s6_addr = ip.octets();
    a.sin6_scope_id = scope;
    a
}

fn set_int(sock: &OwnedFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: an int option of the size given, on a descriptor we own.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface's Ethernet address (SIOCGIFHWADDR; in this thread's network namespace).
fn link_layer_address(sock: &OwnedFd, name: &CString) -> io::Result<[u8; 6]> {
    let bytes = name.as_bytes_with_nul();
    // SAFETY: ifreq is plain data; all zeroes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.len() > req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, &s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq we pass, which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR wrote the hardware address into this member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "not an Ethernet interface",
        ));
    }
    let mut mac = [0u8; 6];
    for (m, &b) in mac.iter_mut().zip(&hw.sa_data) {
        *m = b as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use testkit::netns::Lab;

    #[test]
    fn the_packet_is_an_unsolicited_override_advertisement() {
        let target: Ipv6Addr = "fd00:1::100".parse().unwrap();
        let p = advertisement(target, [2, 0, 0, 0, 0, 0x42]);
        assert_eq!((p[0], p[1]), (136, 0), "type, code");
        assert_eq!(p[4], 0x20, "Override only: not Router, not Solicited");
        assert_eq!(&p[5..8], &[0, 0, 0]);
        assert_eq!(&p[8..24], &target.octets());
        assert_eq!(&p[24..32], &[2, 1, 2, 0, 0, 0, 0, 0x42]);
    }

    fn run(lab: &Lab, host: &str, args: &[&str]) -> String {
        let out = lab.command(host, "ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A peer whose neighbour cache points the address elsewhere (the previous holder) points
    /// it to this host's interface once the advertisement arrives.
    #[test]
    fn a_peer_switches_to_the_advertising_host() {
        if !Lab::usable() {
            return;
        }
        let lab = Lab::new(&["a", "peer"]);
        let vip = "fd00:1::100";
        run(
            &lab,
            "a",
            &[
                "-6",
                "addr",
                "add",
                "fd00:1::100/64",
                "dev",
                "eth0",
                "nodad",
            ],
        );
        run(
            &lab,
            "peer",
            &["-6", "addr", "add", "fd00:1::2/64", "dev", "eth0", "nodad"],
        );
        let old = "02:00:00:00:00:99";
        run(
            &lab,
            "peer",
            &[
                "-6", "neigh", "replace", vip, "lladdr", old, "dev", "eth0", "nud", "stale",
            ],
        );
        let link = run(&lab, "a", &["link", "show", "eth0"]);
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("a's MAC")
            .to_string();
        let neigh = || run(&lab, "peer", &["-6", "neigh", "show", vip, "dev", "eth0"]);
        assert!(neigh().contains(old), "{}", neigh());
        lab.in_host("a", move || advertise("eth0", vip.parse().unwrap()))
            .join()
            .unwrap()
            .expect("advertised");
        let t0 = Instant::now();
        while !neigh().contains(&mac) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the peer still has {} (a is {mac})",
                neigh()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // An interface that does not exist is an error, not a panic.
        let e = lab
            .in_host("a", move || advertise("nosuch0", vip.parse().unwrap()))
            .join()
            .unwrap();
        assert!(e.is_err());
    }
}
