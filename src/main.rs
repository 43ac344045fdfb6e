fn main() {
    std::process::exit(raftlog::cli::run());
}
