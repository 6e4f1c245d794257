int guest_placeholder(int x) { return x + 1; }
