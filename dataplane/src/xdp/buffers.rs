//! TCP buffers lent to connections only while they need them.
//!
//! smoltcp gives a socket its receive and transmit buffers for life; with a million idle
//! IM connections that is a million buffer pairs (6 KiB each at Petrel's defaults) that
//! carry a heartbeat every 50 s. Here a connection holds buffers only while it is polled
//! or written to: [`super::tcp::TcpShard`] lends every socket of a shard a pair from its
//! core's [`BufferPool`] before smoltcp runs, and takes back the pairs that are empty
//! afterwards — no unread data, nothing out of order, nothing unsent or unacknowledged
//! (`tcp::Socket::swap_buffers`, the one method our smoltcp adds: vendor/smoltcp/PETREL.md).
//! A socket between polls holds two zero-capacity buffers, which own no memory.
//!
//! Every buffer has the configured size, so the window a socket advertises is the same
//! whichever pair it is lent. The pool keeps at most [`BufferPool::new`]'s `max_free`
//! pairs for reuse (after warm-up, lending allocates nothing) and frees the rest.

use smoltcp::socket::tcp;

/// A receive and a transmit buffer.
type Pair = (tcp::SocketBuffer<'static>, tcp::SocketBuffer<'static>);

/// A core's free buffer pairs.
#[derive(Debug)]
pub struct BufferPool {
    rx_size: usize,
    tx_size: usize,
    free: Vec<Pair>,
    max_free: usize,
    lent: usize,
    allocated: u64,
}

impl BufferPool {
    /// Pairs of `rx_size` and `tx_size` bytes; at most `max_free` kept for reuse.
    pub fn new(rx_size: usize, tx_size: usize, max_free: usize) -> BufferPool {
        BufferPool {
            rx_size,
            tx_size,
            free: Vec::new(),
            max_free,
            lent: 0,
            allocated: 0,
        }
    }

    /// Lends `socket` a pair if it has none (its buffers have no capacity). Returns
    /// whether it has buffers now.
    pub fn lend(&mut self, socket: &mut tcp::Socket<'static>) -> bool {
        if socket.recv_capacity() > 0 {
            return true;
        }
        let (mut rx, mut tx) = self.free.pop().unwrap_or_else(|| {
            self.allocated += 1;
            (
                tcp::SocketBuffer::new(vec![0; self.rx_size]),
                tcp::SocketBuffer::new(vec![0; self.tx_size]),
            )
        });
        // The socket's zero-capacity buffers are empty, and so are the pool's: this swap
        // always happens.
        let swapped = socket.swap_buffers(&mut rx, &mut tx);
        if swapped {
            self.lent += 1;
        } else {
            self.put((rx, tx));
        }
        swapped
    }

    /// Takes `socket`'s pair back if it holds one and nothing in it is still needed.
    /// Returns whether it did.
    pub fn reclaim(&mut self, socket: &mut tcp::Socket<'static>) -> bool {
        if socket.recv_capacity() == 0 {
            return false;
        }
        let (mut rx, mut tx) = empty_pair();
        if !socket.swap_buffers(&mut rx, &mut tx) {
            return false;
        }
        self.lent = self.lent.saturating_sub(1);
        self.put((rx, tx));
        true
    }

    /// Gives back the pair of a socket that is being dropped.
    pub fn release(&mut self, socket: &mut tcp::Socket<'static>) {
        if socket.recv_capacity() == 0 {
            return;
        }
        // A closed socket's data is dead: swap whatever it holds for empty buffers and
        // keep the pair only if it was empty (a partly filled ring is just dropped).
        if !self.reclaim(socket) {
            self.lent = self.lent.saturating_sub(1);
        }
    }

    fn put(&mut self, (mut rx, mut tx): Pair) {
        if self.free.len() < self.max_free {
            rx.clear();
            tx.clear();
            self.free.push((rx, tx));
        }
    }

    /// Pairs lent out now.
    pub fn lent(&self) -> usize {
        self.lent
    }

    /// Pairs kept for reuse now.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Pairs allocated so far (lending from the free list allocates none).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}

/// Two zero-capacity buffers: what a socket holds between polls (no memory).
pub fn empty_pair() -> Pair {
    (
        tcp::SocketBuffer::new(Vec::new()),
        tcp::SocketBuffer::new(Vec::new()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_socket() -> tcp::Socket<'static> {
        let (rx, tx) = empty_pair();
        tcp::Socket::new(rx, tx)
    }

    #[test]
    fn a_lent_pair_comes_back_when_empty_and_is_reused() {
        let mut pool = BufferPool::new(2048, 4096, 8);
        let mut socket = idle_socket();
        assert_eq!(socket.recv_capacity(), 0);
        assert!(pool.lend(&mut socket));
        assert_eq!(
            (socket.recv_capacity(), socket.send_capacity()),
            (2048, 4096)
        );
        assert!(pool.lend(&mut socket), "lending twice keeps the first pair");
        assert_eq!((pool.lent(), pool.allocated()), (1, 1));
        assert!(pool.reclaim(&mut socket));
        assert_eq!(socket.recv_capacity(), 0);
        assert_eq!((pool.lent(), pool.free()), (0, 1));
        let mut other = idle_socket();
        assert!(pool.lend(&mut other));
        assert_eq!(pool.allocated(), 1, "the free pair was reused");
    }

    #[test]
    fn the_pool_keeps_at_most_max_free_pairs() {
        let mut pool = BufferPool::new(256, 256, 2);
        let mut sockets: Vec<_> = (0..5).map(|_| idle_socket()).collect();
        for s in &mut sockets {
            pool.lend(s);
        }
        for s in &mut sockets {
            pool.reclaim(s);
        }
        assert_eq!((pool.lent(), pool.free(), pool.allocated()), (0, 2, 5));
    }
}
