# delays.awk - reference computation for the airline benchmark, independent of
# SecureStreams: for each carrier (column 9, UniqueCarrier) the number of data
# rows whose ArrDelay (column 15) is a number greater than 0, and the average
# of those delays.
#
#   mawk -F, -f tools/delays.awk flights.csv
#
# Output: one line per carrier, "CARRIER COUNT AVERAGE" with AVERAGE as %.6f,
# sorted by carrier in byte order (the script pipes itself through sort, so
# the caller need not). The header line (line 1) is skipped; "NA" and other
# non-numbers in column 15 are ignored; a carrier without any delay > 0 is
# not listed. Works with mawk, gawk and busybox awk.
BEGIN { FS = "," }

NR > 1 && $15 ~ /^[-+]?[0-9]+(\.[0-9]*)?$/ && $15 + 0 > 0 {
    count[$9]++
    sum[$9] += $15
}

END {
    sorter = "LC_ALL=C sort"
    for (c in count)
        printf "%s %d %.6f\n", c, count[c], sum[c] / count[c] | sorter
    close(sorter)
}
