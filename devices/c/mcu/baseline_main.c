/* The same start-up with an empty program: subtracted from size_main's ELF to isolate the learner. */
int main(void) { return 0; }
