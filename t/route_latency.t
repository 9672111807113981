#!/usr/bin/perl

# llm_balance ... latency: among backends of one priority, the one with
# the most room x weight per millisecond of expected reply time (TTFT
# EWMA + reserve at the tokens/s EWMA) is chosen; a backend without
# samples is tried first.  Without "latency" the same two backends share
# by room alone.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my %p = map { $_ => free_port() } qw(fast slow);
$t->start_sim({ control_port => $ctl, deployments => [
    { name => 'fast', port => $p{fast}, host => 'fast.example',
      api_key => 'k', deployment => 'd', tpm => 1000000,
      ttft_ms => [20, 20], tokens_per_s => 2000, completion_tokens => 10 },
    { name => 'slow', port => $p{slow}, host => 'slow.example',
      api_key => 'k', deployment => 'd', tpm => 1000000,
      ttft_ms => [250, 250], tokens_per_s => 100, completion_tokens => 10 },
] });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();
my $backends = <<"END";
        llm_backend fast http://fast.example tpm=1m rpm=100k
                    key_file=$dir/k.key address=127.0.0.1:$p{fast};
        llm_backend slow http://slow.example tpm=1m rpm=100k
                    key_file=$dir/k.key address=127.0.0.1:$p{slow};
END

my $locations = join '', map { <<"END" } qw(latency room);
        location /$_/ {
            llm_route $_;
            rewrite ^/$_(/.*)\$ \$1 break;
            proxy_pass http://$_;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            add_header X-Backend \$llm_backend always;
        }
END

$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    upstream latency {
        llm_balance zone=llm latency;
$backends
    }

    upstream room {
        llm_balance zone=llm;
$backends
    }

    server {
        listen 127.0.0.1:$listen;
$locations
    }
END

my $chat = '/openai/deployments/d/chat/completions?api-version=2024-10-21';
my $body = '{"messages":[{"role":"user","content":"hi"}],"max_tokens":10,'
         . '"stream":true}';

sub run {
    my ($where, $n) = @_;
    my %count;
    for (1 .. $n) {
        my ($st, $h) = http_post($listen, "/$where$chat", $body);
        $count{$h->{'x-backend'} // "status $st"}++;
    }
    return \%count;
}

# by room alone the two share (first: the backends' remaining-tokens
# headers later tell of the other pool's traffic)
my $c = run('room', 20);
ok(($c->{fast} // 0) >= 5 && ($c->{slow} // 0) >= 5,
   "room alone: both used ($c->{fast}/$c->{slow})");

# both unknown at first: each is tried (no samples: expected 0 ms)
$c = run('latency', 2);
is($c->{fast}, 1, 'latency: the first two requests try both');
is($c->{slow}, 1, '... one each');

$c = run('latency', 20);
is($c->{fast} // 0, 20, 'latency: then every request to the fast one')
    or diag explain $c;

$t->done;
