mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::SplitAllocator = allocator::SplitAllocator;

fn main() {
    allocator::disable_transparent_huge_pages();
    std::process::exit(raftlog::cli::run());
}
