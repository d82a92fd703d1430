//! SQLite's memory in two budgets (ADR 034).
//!
//! SQLite allocates through one process-wide allocator, and its one limit (`hard_heap_limit`) is
//! process-wide too: under that limit a tenant's heavy sort could make the embedded event store's
//! own writes fail for every tenant. [`install`] puts a thin allocator in front of Rust's global
//! one that tags every block with who asked for it. A block asked for while this thread runs
//! tenants' SQL (inside a [`SandboxScope`]) counts against the sandbox's budget ([`set_budget`])
//! and is refused past it, so SQLite fails that statement with `SQLITE_NOMEM`; any other block
//! (the store's connections) is never refused here. Blocks remember their tag, so a block freed or
//! resized on another thread is settled against the budget it was taken from.
//!
//! This crate is the workspace's one exception to `unsafe_code = "forbid"` (its own lint table
//! denies unsafe code but here): SQLite's allocator interface is C function pointers over raw
//! memory. Every block is `HEADER` bytes of bookkeeping (its size and tag) followed by the bytes
//! SQLite sees, allocated with one fixed alignment; each unsafe block states why it is sound.
#![allow(unsafe_code)]

use rusqlite::ffi;
use std::alloc::{Layout, alloc, dealloc, realloc};
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bookkeeping before each block: its size (u64) and its tag (u64). Also the blocks' alignment,
/// which is at least the 8 bytes SQLite requires.
const HEADER: usize = 16;
const SANDBOX: u64 = 1;
const OTHER: u64 = 0;

static BUDGET: AtomicU64 = AtomicU64::new(u64::MAX);
static USED: AtomicU64 = AtomicU64::new(0);
static INSTALLED: OnceLock<bool> = OnceLock::new();

thread_local! {
    static IN_SANDBOX: Cell<bool> = const { Cell::new(false) };
    /// Sandbox bytes this thread took minus those it gave back (see [`thread_net`]).
    static NET: Cell<i64> = const { Cell::new(0) };
}

/// While alive, SQLite memory this thread asks for is the sandbox's. Not `Send`: it marks the
/// thread that made it.
#[derive(Debug)]
pub struct SandboxScope {
    was: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl SandboxScope {
    pub fn enter() -> Self {
        Self {
            was: IN_SANDBOX.with(|c| c.replace(true)),
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for SandboxScope {
    fn drop(&mut self) {
        IN_SANDBOX.with(|c| c.set(self.was));
    }
}

/// Put the tagging allocator in place. It must run before SQLite is first used in the process
/// (the first connection initializes SQLite, after which its allocator cannot change): true when
/// the split is in force (now or from an earlier call), false when it came too late.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: null_mut(),
        };
        // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a `sqlite3_mem_methods`, which SQLite
        // copies before returning; the functions it names are valid for the whole process. SQLite
        // refuses (SQLITE_MISUSE) once it is initialized, which is reported, never ignored.
        let rc = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_MALLOC,
                &methods as *const ffi::sqlite3_mem_methods,
            )
        };
        rc == ffi::SQLITE_OK
    })
}

/// Whether [`install`] put the split in force.
pub fn installed() -> bool {
    INSTALLED.get().copied().unwrap_or(false)
}

/// The most SQLite memory tenants' SQL may hold at once, all sandbox connections together.
pub fn set_budget(bytes: u64) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

/// The SQLite memory the sandbox holds now.
pub fn sandbox_used() -> u64 {
    USED.load(Ordering::Relaxed)
}

/// Give `conn` no lookaside memory (SQLite's per-connection pool for small allocations, about
/// 48 KiB set aside at open whatever the connection holds). A sandbox connection holds one
/// dataset's table: in a soak's cache of small datasets the lookaside was 46 % of what the cache
/// held (heaptrack), so without it the same budget keeps about twice as many small datasets. True when
/// SQLite took the change (it refuses while lookaside memory is in use: call it right after
/// opening).
pub fn without_lookaside(conn: &rusqlite::Connection) -> bool {
    // SAFETY: `handle()` is the live connection's pointer, valid while `conn` is borrowed, and
    // used on this thread only. SQLITE_DBCONFIG_LOOKASIDE takes exactly three more arguments (a
    // buffer pointer, a slot size and a slot count); a null buffer with 0 slots of 0 bytes asks
    // SQLite to free its lookaside and use none. SQLite checks that none is in use and answers
    // SQLITE_BUSY otherwise, leaving the connection as it was.
    let rc = unsafe {
        ffi::sqlite3_db_config(
            conn.handle(),
            ffi::SQLITE_DBCONFIG_LOOKASIDE,
            null_mut::<c_void>(),
            0 as c_int,
            0 as c_int,
        )
    };
    rc == ffi::SQLITE_OK
}

/// Sandbox bytes this thread has taken minus those it has given back, since it started. The
/// difference between two readings around work done on one thread (loading a table into its own
/// connection) is the SQLite memory that work still holds: what a cache of loaded tables must
/// count, rather than an estimate from the input's size.
pub fn thread_net() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

fn count_on_thread(delta: i64) {
    // `try_with`: a block may be freed while this thread's locals are being torn down.
    let _ = NET.try_with(|c| c.set(c.get().wrapping_add(delta)));
}

fn in_sandbox() -> bool {
    // `try_with`: SQLite may free memory while this thread's locals are being torn down.
    IN_SANDBOX.try_with(Cell::get).unwrap_or(false)
}

fn reserve(bytes: u64) -> bool {
    let before = USED.fetch_add(bytes, Ordering::Relaxed);
    if before.saturating_add(bytes) > BUDGET.load(Ordering::Relaxed) {
        USED.fetch_sub(bytes, Ordering::Relaxed);
        return false;
    }
    count_on_thread(bytes as i64);
    true
}

fn release(bytes: u64) {
    USED.fetch_sub(bytes, Ordering::Relaxed);
    count_on_thread(-(bytes as i64));
}

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

/// The block behind a pointer SQLite holds: its start, size and tag.
///
/// # Safety
/// `p` must be a non-null pointer returned by `x_malloc` or `x_realloc` and not yet freed.
unsafe fn block(p: *mut c_void) -> (*mut u8, usize, u64) {
    // SAFETY: per the contract, `HEADER` bytes of bookkeeping precede `p` in the same allocation,
    // aligned to `HEADER`.
    unsafe {
        let base = p.cast::<u8>().sub(HEADER);
        let words = base.cast::<u64>();
        (base, words.read() as usize, words.add(1).read())
    }
}

/// # Safety
/// `base` must be the start of a block of at least `HEADER` bytes, aligned to `HEADER`.
unsafe fn write_header(base: *mut u8, size: usize, tag: u64) {
    // SAFETY: per the contract, the first 16 bytes are ours and aligned for u64.
    unsafe {
        let words = base.cast::<u64>();
        words.write(size as u64);
        words.add(1).write(tag);
    }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Some((size, layout)) = usize::try_from(n).ok().and_then(|s| Some((s, layout(s)?))) else {
        return null_mut();
    };
    let tag = if in_sandbox() { SANDBOX } else { OTHER };
    if tag == SANDBOX && !reserve(size as u64) {
        return null_mut();
    }
    // SAFETY: `layout` has a non-zero size (at least HEADER).
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        if tag == SANDBOX {
            release(size as u64);
        }
        return null_mut();
    }
    // SAFETY: `base` is a fresh block of `layout`, aligned to HEADER; the bytes after the header
    // are the `size` bytes SQLite asked for.
    unsafe {
        write_header(base, size, tag);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what our malloc/realloc returned, once.
    unsafe {
        let (base, size, tag) = block(p);
        if tag == SANDBOX {
            release(size as u64);
        }
        if let Some(layout) = layout(size) {
            dealloc(base, layout);
        }
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: same contract as malloc.
        return unsafe { x_malloc(n) };
    }
    let Some(new) = usize::try_from(n)
        .ok()
        .filter(|&s| s > 0 && layout(s).is_some())
    else {
        return null_mut();
    };
    // SAFETY: `p` came from our malloc/realloc and is live (SQLite's contract).
    let (base, old, tag) = unsafe { block(p) };
    let grows = new.saturating_sub(old) as u64;
    if tag == SANDBOX && grows > 0 && !reserve(grows) {
        return null_mut();
    }
    let Some(old_layout) = layout(old) else {
        return null_mut();
    };
    // SAFETY: `base` was allocated with `old_layout`; the new size (with the header) is non-zero
    // and fits a Layout (checked above).
    let moved = unsafe { realloc(base, old_layout, new + HEADER) };
    if moved.is_null() {
        if grows > 0 && tag == SANDBOX {
            release(grows);
        }
        return null_mut();
    }
    if tag == SANDBOX && old > new {
        release((old - new) as u64);
    }
    // SAFETY: `moved` is the block, resized, still aligned to HEADER.
    unsafe {
        write_header(moved, new, tag);
        moved.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: SQLite asks only about live blocks of ours.
    let (_, size, _) = unsafe { block(p) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    n.checked_add(7).map_or(n, |m| m & !7)
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}
