int part3(int x) { return x * 3 + 3; }
