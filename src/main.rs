mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::SplitAllocator = allocator::SplitAllocator;

fn main() {
    std::process::exit(raftlog::cli::run());
}
