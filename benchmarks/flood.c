/* A minimal UDP flood for the lvsfw benchmark: one prebuilt Ethernet/IPv4/UDP frame sent
 * as fast as possible through an AF_PACKET socket (qdisc bypassed) with sendmmsg batches.
 *
 * usage: flood IFNAME SRC_MAC DST_MAC SRC_IP DST_IP DST_PORT SECONDS
 * prints: "<packets sent> <seconds elapsed>" on stdout.
 * Built at run time by benchmarks/pps.py (gcc -O2); it never runs outside the client netns.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define PAYLOAD 18

static int parse_mac(const char *text, uint8_t *mac) {
    unsigned int b[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
        return -1;
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)b[i];
    return 0;
}

static uint16_t checksum(const void *data, size_t len) {
    const uint16_t *words = data;
    uint32_t sum = 0;
    for (; len > 1; len -= 2)
        sum += *words++;
    if (len)
        sum += *(const uint8_t *)words;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s IF SRC_MAC DST_MAC SRC_IP DST_IP DST_PORT SECONDS\n", argv[0]);
        return 2;
    }
    uint8_t frame[sizeof(struct ether_header) + sizeof(struct iphdr) + sizeof(struct udphdr) + PAYLOAD];
    memset(frame, 0, sizeof frame);
    struct ether_header *eth = (struct ether_header *)frame;
    struct iphdr *ip = (struct iphdr *)(eth + 1);
    struct udphdr *udp = (struct udphdr *)(ip + 1);
    if (parse_mac(argv[2], eth->ether_shost) || parse_mac(argv[3], eth->ether_dhost)) {
        fprintf(stderr, "bad MAC address\n");
        return 2;
    }
    eth->ether_type = htons(ETHERTYPE_IP);
    ip->version = 4;
    ip->ihl = 5;
    ip->ttl = 64;
    ip->protocol = IPPROTO_UDP;
    ip->tot_len = htons(sizeof(struct iphdr) + sizeof(struct udphdr) + PAYLOAD);
    if (inet_pton(AF_INET, argv[4], &ip->saddr) != 1 || inet_pton(AF_INET, argv[5], &ip->daddr) != 1) {
        fprintf(stderr, "bad IPv4 address\n");
        return 2;
    }
    ip->check = checksum(ip, sizeof(struct iphdr));
    udp->source = htons(40000);
    udp->dest = htons((uint16_t)atoi(argv[6]));
    udp->len = htons(sizeof(struct udphdr) + PAYLOAD);
    udp->check = 0; /* optional for IPv4 */

    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll addr;
    memset(&addr, 0, sizeof addr);
    addr.sll_family = AF_PACKET;
    addr.sll_protocol = htons(ETH_P_IP);
    addr.sll_ifindex = (int)if_nametoindex(argv[1]);
    addr.sll_halen = ETH_ALEN;
    memcpy(addr.sll_addr, eth->ether_dhost, ETH_ALEN);
    if (addr.sll_ifindex == 0) {
        perror("if_nametoindex");
        return 1;
    }
    struct iovec iov = {frame, sizeof frame};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_name = &addr;
        msgs[i].msg_hdr.msg_namelen = sizeof addr;
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    double seconds = atof(argv[7]);
    double start = now(), elapsed = 0;
    unsigned long long sent = 0;
    while (elapsed < seconds) {
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0)
            sent += (unsigned long long)n;
        elapsed = now() - start;
    }
    printf("%llu %.6f\n", sent, elapsed);
    return 0;
}
