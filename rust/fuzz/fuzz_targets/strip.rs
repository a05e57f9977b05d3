#![no_main]
//! See `ssetally_fuzz::props::check_strip` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ssetally_fuzz::props::check_strip(data);
});
