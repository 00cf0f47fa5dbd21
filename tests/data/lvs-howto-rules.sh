#!/bin/sh
# Director mark rules in the LVS-HOWTO style (written for lvsfw): FTP with its passive range,
# two directors that are also real servers (-m mac ! --mac-source), a SYN-only rule.
iptables -t mangle -A PREROUTING -i eth0 -d 192.0.2.21 -p tcp --dport 21 -j MARK --set-mark 21
iptables -t mangle -A PREROUTING -d 192.0.2.21 -p tcp --dport 1024: -j MARK --set-mark 21
iptables -t mangle -A PREROUTING -d 192.0.2.80 -p tcp --dport 80 -m mac ! --mac-source 00:16:3e:00:00:02 -j MARK --set-mark 80
iptables -t mangle -A PREROUTING -d 192.0.2.80 -p tcp ! --syn --dport 443 -j MARK --set-mark 80
iptables -t mangle -R PREROUTING 5 -d 192.0.2.90 -p udp --dport :1023 -j MARK --set-mark 90
iptables -t mangle -A PREROUTING -d 192.0.2.91 -p tcp --dport 80 -m mark --mark 0x1 -j MARK --set-mark 91
iptables -t mangle -A PREROUTING -s 0.0.0.0/0 -d 192.0.2.92 -p tcp --dport 80 -j MARK --set-mark 92
iptables -t mangle -A PREROUTING -d 192.0.2.93 -p tcp --dport 80 --tcp-flags SYN SYN -j MARK --set-mark 93
