/* Numbers the datapath reads off the wire, from the protocol specifications
 * (ethertypes, IP protocol numbers, header flags and masks), written once
 * here. The ones the linux/ headers already name (ETH_P_IP, IPPROTO_TCP, ...) come
 * from there; these are the ones it does not, or not for BPF. */
#ifndef EW_PROTOCOLS_H
#define EW_PROTOCOLS_H

#define ETH_P_8021AD_ 0x88A8            /* QinQ outer tag (802.1ad) */

#define IPPROTO_ICMPV6_ 58

/* IPv4 frag_off, host byte order */
#define IPV4_MF 0x2000
#define IPV4_OFFSET_MASK 0x1fff

/* IPv6 extension headers the parser walks */
#define IPV6_NEXTHDR_HOP 0
#define IPV6_NEXTHDR_ROUTING 43
#define IPV6_NEXTHDR_FRAGMENT 44
#define IPV6_NEXTHDR_DEST 60
#define IPV6_FRAG_OFFSET_MASK 0xfff8    /* of the fragment header's frag_off, host byte order */
#define IPV6_FRAG_MORE 1

/* Byte 13 of the TCP header */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* TCP option kinds and lengths (RFC 9293, 7323, 2018) */
#define TCP_OPT_EOL 0
#define TCP_OPT_NOP 1
#define TCP_OPT_MSS 2
#define TCP_OPT_MSS_LEN 4
#define TCP_OPT_WSCALE 3
#define TCP_OPT_WSCALE_LEN 3
#define TCP_OPT_WSCALE_MAX 14
#define TCP_OPT_SACK_PERM 4
#define TCP_OPT_SACK_PERM_LEN 2
#define TCP_OPT_TIMESTAMP 8
#define TCP_OPT_TIMESTAMP_LEN 10
#define TCP_MAX_HEADER_BYTES 60

#define IPV4_DONT_FRAGMENT 0x4000

#endif /* EW_PROTOCOLS_H */
