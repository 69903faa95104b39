// Builds the test programs' precompiled header; the program itself does nothing.
int main() { return 0; }
