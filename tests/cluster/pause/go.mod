module newsgroups-observability/cluster/pause

go 1.25.0
