//! A file reader that counts the bytes read, for progress reports of
//! imports and unpacking (the count is shared with the reporter).

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::rc::Rc;

pub(super) struct Counted {
    pub(super) file: File,
    pub(super) count: Rc<Cell<u64>>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}
