int part4(int x) { return x * 4 + 4; }
