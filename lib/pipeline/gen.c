/*
 * gen.c - synthetic airline on-time data in the Data Expo 2009 schema, the
 * data set of the seed's evaluation (29 columns, "NA" where missing), and
 * the `securestreams gen` command.
 *
 * What is promised: the header line below, then `rows` rows; the output is a
 * pure function of (rows, seed) on every platform (integer arithmetic, a
 * xoshiro256** stream seeded by splitmix64, and an IEEE sqrt that is exact
 * by the standard). Rows are independent draws, not sorted by date.
 *
 * The model, close enough to the real files for the benchmarks: years
 * 2005-2008 with real calendars; 20 carriers with market-share weights; 300
 * US airports picked with Zipf weights (hubs dominate), at fixed pseudo
 * coordinates that give each route a stable distance; scheduled elapsed time
 * from the distance; departure delays about half early, 9% on time and a
 * positive part with a geometric long tail (hundreds of minutes); taxi and
 * air times around the schedule, so ArrDelay = DepDelay + ActualElapsedTime
 * - CRSElapsedTime and ArrTime = DepTime + ActualElapsedTime hold exactly
 * (clock times ignore time zones). About 45% of ArrDelay values are > 0.
 * 2% of flights are cancelled (times and delays "NA", a CancellationCode),
 * 0.2% diverted (arrival columns "NA"). The five delay-cause columns are
 * integers summing to ArrDelay when ArrDelay >= 15, "NA" otherwise, as in
 * the real data since 2003. Rows average about 100 bytes.
 *
 * Speed: rows are formatted by hand into a 1 MiB buffer written with one
 * fwrite per buffer; no stdio formatting per field.
 */
#include "pipeline/gen.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GEN_BUF (1u << 20)
#define ROW_MAX 512                 /* a row is far shorter than this */
#define NCARRIERS 20
#define NAIRPORTS 300
#define CARRIER_SLOTS 4096          /* pick tables, indexed by random bits */
#define AIRPORT_SLOTS 8192

static const char header[] =
    "Year,Month,DayofMonth,DayOfWeek,DepTime,CRSDepTime,ArrTime,CRSArrTime,"
    "UniqueCarrier,FlightNum,TailNum,ActualElapsedTime,CRSElapsedTime,AirTime,"
    "ArrDelay,DepDelay,Origin,Dest,Distance,TaxiIn,TaxiOut,Cancelled,"
    "CancellationCode,Diverted,CarrierDelay,WeatherDelay,NASDelay,SecurityDelay,"
    "LateAircraftDelay\n";

/* Share of flights (per mille, roughly 2007-2008) and highest flight number. */
static const struct {
    char code[3];
    uint16_t weight;
    uint16_t max_flight;
} carriers[NCARRIERS] = {
    {"WN", 170, 3999}, {"AA", 85, 2399}, {"OO", 80, 7299}, {"MQ", 70, 4999},
    {"US", 64, 2199}, {"DL", 63, 1999}, {"UA", 63, 1999}, {"XE", 53, 3299},
    {"NW", 50, 1799}, {"CO", 43, 1999}, {"EV", 40, 5999}, {"9E", 37, 5999},
    {"FL", 37, 999},  {"YV", 35, 7499}, {"OH", 28, 5999}, {"B6", 28, 1299},
    {"AS", 22, 999},  {"F9", 14, 999},  {"HA", 9, 599},   {"AQ", 1, 299},
};

/* Busiest first: the Zipf weight of an airport falls with its position. */
static const char airports[NAIRPORTS * 3 + 1] =
    "ATLORDDFWLAXDENPHXIAHLASDTWSFOSLCMSPEWRMCOJFKCLTBOSLGASEAPHL"
    "BWIDCAIADCVGMDWSANFLLTPAMIASTLHOUMEMPDXOAKBNAMCICLEDALRDUSJC"
    "SMFAUSMSYSNAINDSATPITMKECMHABQBDLBURONTJAXOKCRSWBHMTULOMAPBI"
    "ELPRNOSDFRICORFBUFPVDTUSLITSJUHNLOGGGEGBOIDSMALBGRRSYRCHSROC"
    "GSOSAVMHTTYSICTDAYPWMLGBCOSSRQMYRXNAPNSMSNCAELEXGSPHSVJANBTR"
    "CIDFATANCKOALIHSBAMAFLBBAMACRPHRLGPTMOBSHVTLHVPSECPPFNDABMLB"
    "GNVEYWFNTLANAZOSBNFWAEVVCAKTOLERIAVPABEMDTIPTITHELMBGMISPHPN"
    "SWFACYTTNBTVBGRPSMPVCACKMVYHYAEWNOAJILMFAYAVLTRICHACSGABYAGS"
    "VLDBQKMGMDHNMEIPIBTUPGTRCBMLFTLCHMLUAEXBPTTYRGGGACTCLLSJTABI"
    "SPSLAWDRTLRDBROMFETXKFSMFYVJLNSGFCOUCMISPIPIABMIMLIDBQALOSUX"
    "FSDRAPBISFARGFKMOTMSOBZNBILGTFHLNFCABTMIDAPIHSUNTWFJACCODCPR"
    "CYSRKSGCCLARDROGJTMTJASEEGEHDNGUCPUBALSFMNGUPSAFROWHOBYUMFLG"
    "PRCIFPGCNSGUCDCELYEKOBFLSMXSBPMRYSCKMODMCECICRDDACVCECCLDPSP"
    "IYKPMDOXRVISLMTMFREUGOTHRDMPSCYKMALWPUWLWSBLIWYSFAIJNUKTNSIT"
    "WRGPSGYAKCDVVDZADQBETOMEOTZBRWSCCDLGAKNADKITOSTTSTXGUMSPNBQN";

static const char digits2[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

typedef struct {
    uint8_t carrier_pick[CARRIER_SLOTS];
    uint16_t airport_pick[AIRPORT_SLOTS];
    int32_t x[NAIRPORTS], y[NAIRPORTS];   /* pseudo coordinates, miles */
    uint8_t days[4][12];                  /* days in month, 2005..2008 */
    uint8_t dow1[4][12];                  /* weekday of the 1st, 0 = Monday */
} model;

typedef struct {
    uint64_t s[4];
} rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman and Vigna). */
static inline uint64_t next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in [0, n) by multiply-shift (Lemire), bias below 2^-32 * n. */
static inline uint32_t below(rng *r, uint32_t n)
{
    return (uint32_t)(((next(r) >> 32) * n) >> 32);
}

/* Geometric: k with probability 2^-(k+1), capped at cap. */
static inline int geometric(rng *r, int cap)
{
    int k = __builtin_ctzll(next(r) | (1ull << 63));
    return k < cap ? k : cap;
}

/* Fill `slots` entries with indexes 0..n-1, each at least once, the rest in
 * proportion to weight. */
static void fill_pick(const uint32_t *weight, int n, void *table, int slots, int wide)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += weight[i];
    int at = 0;
    for (int i = 0; i < n; i++) {
        int k = 1 + (int)((uint64_t)weight[i] * (uint64_t)(slots - n) / total);
        for (int j = 0; j < k && at < slots; j++, at++) {
            if (wide)
                ((uint16_t *)table)[at] = (uint16_t)i;
            else
                ((uint8_t *)table)[at] = (uint8_t)i;
        }
    }
    for (; at < slots; at++) {   /* rounding leftovers go to the biggest */
        if (wide)
            ((uint16_t *)table)[at] = 0;
        else
            ((uint8_t *)table)[at] = 0;
    }
}

static void model_init(model *m)
{
    uint32_t w[NAIRPORTS];
    for (int i = 0; i < NCARRIERS; i++)
        w[i] = carriers[i].weight;
    fill_pick(w, NCARRIERS, m->carrier_pick, CARRIER_SLOTS, 0);
    for (int i = 0; i < NAIRPORTS; i++)
        w[i] = 1000000u / (uint32_t)(i + 6);
    fill_pick(w, NAIRPORTS, m->airport_pick, AIRPORT_SLOTS, 1);

    uint64_t seed = 2009;   /* airports do not move with the user's seed */
    for (int i = 0; i < NAIRPORTS; i++) {
        uint64_t h = splitmix64(&seed);
        m->x[i] = (int32_t)(h % 2400);
        m->y[i] = (int32_t)((h >> 32) % 1100);
    }

    static const uint8_t mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    static const int t[12] = {0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4};
    for (int yi = 0; yi < 4; yi++) {
        int year = 2005 + yi;
        for (int mo = 0; mo < 12; mo++) {
            m->days[yi][mo] = (uint8_t)(mdays[mo] + (mo == 1 && year % 4 == 0));
            int yy = year - (mo < 2);   /* Sakamoto: 0 = Sunday */
            int sun0 = (yy + yy / 4 - yy / 100 + yy / 400 + t[mo] + 1) % 7;
            m->dow1[yi][mo] = (uint8_t)((sun0 + 6) % 7);
        }
    }
}

static inline char *put_u(char *p, uint32_t v)
{
    if (v < 10) {
        *p = (char)('0' + v);
        return p + 1;
    }
    if (v < 100) {
        memcpy(p, digits2 + 2 * v, 2);
        return p + 2;
    }
    if (v < 1000) {
        *p = (char)('0' + v / 100);
        memcpy(p + 1, digits2 + 2 * (v % 100), 2);
        return p + 3;
    }
    if (v < 10000) {
        memcpy(p, digits2 + 2 * (v / 100), 2);
        memcpy(p + 2, digits2 + 2 * (v % 100), 2);
        return p + 4;
    }
    char tmp[10];
    int n = 0;
    while (v) {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    }
    while (n)
        *p++ = tmp[--n];
    return p;
}

static inline char *put_i(char *p, int32_t v)
{
    if (v < 0) {
        *p++ = '-';
        return put_u(p, (uint32_t)-v);
    }
    return put_u(p, (uint32_t)v);
}

#define PUT(p, lit) (memcpy((p), (lit), sizeof(lit) - 1), (p) + sizeof(lit) - 1)

/* hhmm of a minute of the day; actual times use 2400 for midnight. */
static inline uint32_t clock_hhmm(int32_t minute, int actual)
{
    minute %= 1440;
    if (minute < 0)
        minute += 1440;
    if (minute == 0 && actual)
        return 2400;
    return (uint32_t)(minute / 60 * 100 + minute % 60);
}

static char *put_row(const model *m, rng *r, char *p)
{
    uint32_t ym = below(r, 48), yi = ym / 12, mo = ym % 12;
    uint32_t day = 1 + below(r, m->days[yi][mo]);
    uint32_t dow = (m->dow1[yi][mo] + day - 1) % 7 + 1;

    uint64_t x = next(r);
    int c = m->carrier_pick[x >> 52];
    int o = m->airport_pick[(x >> 39) & (AIRPORT_SLOTS - 1)];
    int d = m->airport_pick[(x >> 26) & (AIRPORT_SLOTS - 1)];
    if (d == o)
        d = (o + 1 + (int)(x & 63)) % NAIRPORTS;
    uint32_t plane = (uint32_t)((x >> 6) & 511);
    double dx = m->x[o] - m->x[d], dy = m->y[o] - m->y[d];
    int32_t distance = 31 + (int32_t)(sqrt(dx * dx + dy * dy) * 0.85);

    int32_t crs_elapsed = 24 + distance * 60 / 450 + (int32_t)below(r, 10);
    int32_t crs_dep = 330 + (int32_t)below(r, 1110);
    uint32_t flight = 1 + below(r, carriers[c].max_flight);
    uint32_t roll = below(r, 100000);

    p = put_u(p, 2005 + yi);
    *p++ = ',';
    p = put_u(p, mo + 1);
    *p++ = ',';
    p = put_u(p, day);
    *p++ = ',';
    p = put_u(p, dow);
    *p++ = ',';

    int cancelled = roll < 2000, diverted = !cancelled && roll < 2200;
    int32_t dep_delay = 0, taxi_out = 0, taxi_in = 0, air = 0, actual = 0, arr_delay = 0;
    if (!cancelled) {
        uint32_t u = below(r, 1000);
        if (u < 20)
            dep_delay = -(int32_t)(13 + below(r, 16));
        else if (u < 475)
            dep_delay = -(int32_t)(1 + below(r, 12));
        else if (u < 565)
            dep_delay = 0;
        else {
            int32_t scale = u >= 945 ? 40 : 11;
            dep_delay = 1 + geometric(r, 40) * scale + (int32_t)below(r, (uint32_t)scale);
        }
        taxi_out = 5 + (int32_t)below(r, 12) + 5 * geometric(r, 8);
        taxi_in = 2 + (int32_t)below(r, 8) + 3 * geometric(r, 2) * (int32_t)(roll & 1);
        air = crs_elapsed - 25 + (int32_t)below(r, 25) - 12;
        if (air < 8)
            air = 8 + (int32_t)below(r, 5);
        actual = air + taxi_in + taxi_out;
        arr_delay = dep_delay + actual - crs_elapsed;
    }
    int32_t dep_time = crs_dep + dep_delay;

    if (cancelled)
        p = PUT(p, "NA");
    else
        p = put_u(p, clock_hhmm(dep_time, 1));
    *p++ = ',';
    p = put_u(p, clock_hhmm(crs_dep, 0));
    *p++ = ',';
    if (cancelled || diverted)
        p = PUT(p, "NA");
    else
        p = put_u(p, clock_hhmm(dep_time + actual, 1));
    *p++ = ',';
    p = put_u(p, clock_hhmm(crs_dep + crs_elapsed, 0));
    *p++ = ',';
    memcpy(p, carriers[c].code, 2);
    p[2] = ',';
    p = put_u(p + 3, flight);
    *p++ = ',';

    /* a fleet of 512 tails per carrier: N + 3 digits + 2 letters */
    uint64_t h = ((uint64_t)c * 1000 + plane + 1) * 0x9e3779b97f4a7c15u;
    p[0] = 'N';
    p = put_u(p + 1, 100 + (uint32_t)((h >> 40) % 900));
    p[0] = (char)('A' + (h >> 20) % 26);
    p[1] = (char)('A' + (h >> 8) % 26);
    p[2] = ',';
    p += 3;

    if (cancelled || diverted) {
        p = PUT(p, "NA,");
        p = put_u(p, (uint32_t)crs_elapsed);
        p = PUT(p, ",NA,NA,");
    } else {
        p = put_u(p, (uint32_t)actual);
        *p++ = ',';
        p = put_u(p, (uint32_t)crs_elapsed);
        *p++ = ',';
        p = put_u(p, (uint32_t)air);
        *p++ = ',';
        p = put_i(p, arr_delay);
        *p++ = ',';
    }
    if (cancelled)
        p = PUT(p, "NA");
    else
        p = put_i(p, dep_delay);
    *p++ = ',';
    memcpy(p, airports + 3 * o, 3);
    p[3] = ',';
    memcpy(p + 4, airports + 3 * d, 3);
    p[7] = ',';
    p = put_u(p + 8, (uint32_t)distance);
    *p++ = ',';

    if (cancelled) {
        uint32_t k = roll % 1000;   /* A carrier, B weather, C NAS, D security */
        char code = k < 400 ? 'A' : k < 780 ? 'B' : k < 999 ? 'C' : 'D';
        p = PUT(p, "NA,NA,1,");
        *p++ = code;
        return PUT(p, ",0,NA,NA,NA,NA,NA\n");
    }
    if (diverted) {
        p = PUT(p, "NA,");
        p = put_u(p, (uint32_t)taxi_out);
        return PUT(p, ",0,,1,NA,NA,NA,NA,NA\n");
    }
    p = put_u(p, (uint32_t)taxi_in);
    *p++ = ',';
    p = put_u(p, (uint32_t)taxi_out);
    if (arr_delay < 15)
        return PUT(p, ",0,,0,NA,NA,NA,NA,NA\n");

    /* causes sum to ArrDelay: time lost en route is NAS, the rest splits
     * between carrier and late aircraft, sometimes weather or security */
    int32_t rest = arr_delay;
    int32_t nas = arr_delay - (dep_delay > 0 ? dep_delay : 0);
    nas = nas < 0 ? 0 : nas > rest ? rest : nas;
    rest -= nas;
    int32_t weather = below(r, 100) < 6 ? (int32_t)below(r, (uint32_t)rest + 1) : 0;
    rest -= weather;
    int32_t security = 0;
    if (below(r, 1000) < 3) {
        security = (int32_t)below(r, 30);
        security = security > rest ? rest : security;
    }
    rest -= security;
    int32_t carrier = (int32_t)below(r, (uint32_t)rest + 1);
    int32_t late = rest - carrier;
    p = PUT(p, ",0,,0,");
    p = put_u(p, (uint32_t)carrier);
    *p++ = ',';
    p = put_u(p, (uint32_t)weather);
    *p++ = ',';
    p = put_u(p, (uint32_t)nas);
    *p++ = ',';
    p = put_u(p, (uint32_t)security);
    *p++ = ',';
    p = put_u(p, (uint32_t)late);
    *p++ = '\n';
    return p;
}

static ss_err flush(FILE *out, const char *buf, size_t n)
{
    if (n > 0 && fwrite(buf, 1, n, out) != n)
        return SS_ERR_IO;
    return SS_OK;
}

/*
 * Errors: SS_ERR_NOMEM (the 1 MiB buffer), SS_ERR_IO when a write fails
 * (errno tells why). Does not close or flush `out`.
 */
ss_err ss_gen_flights(FILE *out, uint64_t rows, uint64_t seed)
{
    char *buf = malloc(GEN_BUF);
    model *m = malloc(sizeof *m);
    ss_err err = SS_ERR_NOMEM;
    if (!buf || !m)
        goto out;
    model_init(m);

    rng r;
    uint64_t sm = seed;
    for (int i = 0; i < 4; i++)
        r.s[i] = splitmix64(&sm);

    char *p = buf, *limit = buf + GEN_BUF - ROW_MAX;
    p = PUT(p, header);
    for (uint64_t i = 0; i < rows; i++) {
        p = put_row(m, &r, p);
        if (p >= limit) {
            if ((err = flush(out, buf, (size_t)(p - buf))) != SS_OK)
                goto out;
            p = buf;
        }
    }
    err = flush(out, buf, (size_t)(p - buf));
out:
    free(m);
    free(buf);
    return err;
}

