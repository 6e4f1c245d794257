//! The guest functions of `tests/guest/cb_funcs.S` (linked into every test executable) and
//! the labels inside them that callbacks are attached to (`cb_<func>_<what>`; `cb_<func>_end`
//! ends each function), for the callback, direct-call and inlined-call tests.

unsafe extern "C" {
    pub fn cb_straight(x: u64) -> u64;
    pub fn cb_straight_end();
    pub fn cb_loop(n: u64) -> u64;
    pub fn cb_loop_jz();
    pub fn cb_loop_body();
    pub fn cb_loop_jnz();
    pub fn cb_loop_ret();
    pub fn cb_loop_end();
    pub fn cb_call_ret(x: u64) -> u64;
    pub fn cb_call_ret_call();
    pub fn cb_call_ret_after();
    pub fn cb_call_ret_callee();
    pub fn cb_call_ret_end();
    pub fn cb_inc(x: u64) -> u64;
    pub fn cb_inc_inc();
    pub fn cb_inc_add();
    pub fn cb_read_hi16(out: *mut u8);
    pub fn cb_read_hi16_end();
    pub fn cb_inc_ret();
    pub fn cb_inc_end();
    pub fn cb_double(x: u64) -> u64;
    pub fn cb_double_end();
    pub fn cb_xmm_io(x: u64) -> u64;
    pub fn cb_xmm_io_probe();
    pub fn cb_xmm_io_end();
    pub fn cb_ymm_io(x: u64) -> u64;
    pub fn cb_ymm_io_probe();
    pub fn cb_ymm_io_end();
    pub fn cb_mnem(x: u64) -> u64;
    pub fn cb_mnem_end();
    pub fn cb_vec_avx2(input: *const u8, out: *mut u8);
    pub fn cb_vec_avx2_done();
    pub fn cb_vec_avx2_end();
    pub fn cb_vec_avx512(input: *const u8, out: *mut u8);
    pub fn cb_vec_avx512_done();
    pub fn cb_vec_avx512_end();
    pub fn cb_flags_tail(x: u64) -> u64;
    pub fn cb_flags_tail_end();
    pub fn cb_df(x: u64) -> u64;
    pub fn cb_df_end();
    pub fn cb_mem(buf: *mut u64) -> u64;
    pub fn cb_mem_end();
}
