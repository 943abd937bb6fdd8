//! `SO_REUSEPORT` listening sockets, one per core per listen address.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

fn bind_one(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Binds `cores` listeners to each address. The first bind of an address resolves port 0
/// to a real port, which the other cores then share. Returns one `Vec` per core, in the
/// order of `addrs`.
pub(super) fn bind_reuseport(
    addrs: &[SocketAddr],
    cores: usize,
    backlog: i32,
) -> io::Result<Vec<Vec<TcpListener>>> {
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no listen address configured",
        ));
    }
    let mut per_core: Vec<Vec<TcpListener>> = (0..cores).map(|_| Vec::new()).collect();
    for &addr in addrs {
        let first = bind_one(addr, backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let resolved = first.local_addr()?;
        per_core[0].push(first);
        for listeners in per_core.iter_mut().skip(1) {
            listeners.push(bind_one(resolved, backlog)?);
        }
    }
    Ok(per_core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_resolves_once_and_every_core_shares_it() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let per_core = bind_reuseport(&[addr], 3, 16).unwrap();
        let ports: Vec<u16> = per_core
            .iter()
            .map(|ls| ls[0].local_addr().unwrap().port())
            .collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|&p| p == ports[0]));
    }

    #[test]
    fn no_address_is_an_error() {
        assert!(bind_reuseport(&[], 1, 16).is_err());
    }
}
