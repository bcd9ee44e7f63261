//! Backup files (`surepush restore`, `backup verify`): whatever the bytes, the reader
//! answers with a summary or an error, never a panic or an allocation the file's size
//! does not justify (libFuzzer's -rss_limit_mb catches those).
#![no_main]

use libfuzzer_sys::fuzz_target;
use surepush::store::backup::{read, Item};

fuzz_target!(|data: &[u8]| {
    let mut bytes = 0usize;
    let _ = read(data, |item| {
        bytes += match &item {
            Item::Tree(name) => name.len(),
            Item::Pair(key, value) => key.len() + value.len(),
            Item::File(name, body) => name.len() + body.len(),
        };
        Ok(())
    });
    assert!(bytes <= data.len(), "items hold more bytes than the file");
});
