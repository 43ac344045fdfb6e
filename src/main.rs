fn main() {
    eprintln!("raftlog: the node is not built yet");
    std::process::exit(2);
}
