#include <stdio.h>
int part1(int), part2(int), part3(int), part4(int);
int main(void) {
    printf("ccdemo %d\n", part1(1) + part2(2) + part3(3) + part4(4));
    return 0;
}
