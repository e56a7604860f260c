//! The bounded output tail: the last N bytes written, kept as bytes (lossless for binary output)
//! and turned into text only at the end.

use std::collections::VecDeque;

/// The last `capacity` bytes pushed, and how many there were in all.
#[derive(Debug)]
pub(super) struct Tail {
    bytes: VecDeque<u8>,
    capacity: usize,
    total: u64,
}

impl Tail {
    /// An empty tail that keeps at most `capacity` bytes.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::with_capacity(capacity.min(1 << 20)),
            capacity,
            total: 0,
        }
    }

    /// Appends `chunk`, dropping the oldest bytes beyond the capacity.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if chunk.len() >= self.capacity {
            self.bytes.clear();
            self.bytes.extend(&chunk[chunk.len() - self.capacity..]);
            return;
        }
        let overflow = (self.bytes.len() + chunk.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(chunk);
    }

    /// The kept bytes, oldest first, and the total pushed.
    pub(super) fn snapshot(&self) -> (Vec<u8>, u64) {
        (self.bytes.iter().copied().collect(), self.total)
    }
}

/// `bytes` as text. When `truncated`, the tail may start inside a UTF-8 sequence: up to three
/// leading continuation bytes are dropped instead of becoming U+FFFD.
pub(super) fn text(bytes: &[u8], truncated: bool) -> String {
    let start = if truncated {
        bytes
            .iter()
            .take(3)
            .take_while(|byte| (0x80..0xc0).contains(*byte))
            .count()
    } else {
        0
    };
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_across_chunks() {
        let mut tail = Tail::new(5);
        tail.push(b"abc");
        assert_eq!(tail.snapshot(), (b"abc".to_vec(), 3));
        tail.push(b"defg");
        assert_eq!(tail.snapshot(), (b"cdefg".to_vec(), 7));
        tail.push(b"0123456789");
        assert_eq!(tail.snapshot(), (b"56789".to_vec(), 17));
        tail.push(b"");
        assert_eq!(tail.snapshot(), (b"56789".to_vec(), 17));
    }

    #[test]
    fn zero_capacity_counts_only() {
        let mut tail = Tail::new(0);
        tail.push(b"abc");
        assert_eq!(tail.snapshot(), (Vec::new(), 3));
    }

    #[test]
    fn text_drops_a_cut_sequence_only_when_truncated() {
        let euro = "€".as_bytes(); // e2 82 ac
        let cut = [&euro[1..], b"ok".as_slice()].concat();
        assert_eq!(text(&cut, true), "ok");
        assert_eq!(text(&cut, false), "\u{fffd}\u{fffd}ok");
        assert_eq!(text("é€x".as_bytes(), true), "é€x");
        assert_eq!(text(&[0xff, b'a'], true), "\u{fffd}a");
    }
}
