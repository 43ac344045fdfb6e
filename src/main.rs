// Issue 14: a profile of the leader at 64-client puts spent about 18% of its samples in
// glibc's malloc, free and their chunk consolidation (every request allocates its body,
// command, entry and reply). mimalloc's thread-local free lists make those calls cheap.
// Only the binary sets it; an embedder of the library keeps its own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(raftlog::cli::run());
}
