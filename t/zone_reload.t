#!/usr/bin/perl

# The state of a backend removed from the configuration is freed only
# once no worker that may still use it is left: a worker of an old
# configuration lives as long as its longest request (a stream), through
# any number of reloads, and writes that request's charge and usage into
# its backend's state when it ends.  Freed too early, that memory went to
# the next backend added, which showed the removed one's usage.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

# one deployment, slow: a stream of 20 tokens at 2 a second, ten seconds
# for three reloads on a loaded machine
my $ctl = free_port();
my $port = free_port();
$t->start_sim({ control_port => $ctl, deployments => [
    { name => 'd', port => $port, host => 'd.example', deployment => 'd',
      api_key => 'k', tpm => 1000000, ttft_ms => [0, 0],
      tokens_per_s => 2, completion_tokens => 20 } ] });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();

sub conf {
    my $backends = join '', map { <<"END" } @_;
        llm_backend $_ http://d.example deployment=d tpm=1m
                    key_file=$dir/k.key address=127.0.0.1:$port;
END
    return <<"END";
    llm_zone llm:1m;

    upstream pool {
        llm_balance zone=llm;
$backends
    }

    server {
        listen 127.0.0.1:$listen;

        location / {
            llm_route pool;
            proxy_pass http://pool;
            proxy_buffering off;
        }

        location = /status {
            llm_status;
        }
    }
END
}

sub backends {
    my ($s) = llm_status($listen);
    return $s ? { map { $_->{name} => $_ } @{ $s->{pools}[0]{backends} } }
              : {};
}

sub started { scalar(() = $t->error_log =~ /start worker process/g) }

# the nginx master's children, from /proc
sub workers {
    my @pids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $f, '<', $stat or next;
        my $line = <$f> // next;
        my ($pid, $ppid) = $line =~ /^(\d+) \(.*\) \S+ (\d+)/ or next;
        push @pids, $pid if $ppid == $t->{nginx_pid};
    }
    return @pids;
}

# a reload, done when the new workers are up and the page shows names
sub reload {
    my @names = @_;
    my $before = started();
    $t->reload_nginx(conf(@names));
    ok(wait_for(10, sub {
        started() > $before
            && join(',', sort keys %{ backends() })
               eq join(',', sort @names);
    }), 'reload to ' . join(' and ', @names));
}

$t->start_nginx(conf('xx'), ports => [$listen]);

# the stream, through xx, read to its end by a child
my $chat = '/openai/deployments/d/chat/completions?api-version=2024-10-21';
my $out = "$dir/stream.out";
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    my ($st, $h, $b) = http_post($listen, $chat, json_encode({
        stream => JSON::PP::true, max_tokens => 100,
        stream_options => { include_usage => JSON::PP::true },
        messages => [ { role => 'user', content => 'hello' } ] }));
    open my $o, '>', $out or die;
    print $o "$st\n$b";
    close $o;
    POSIX::_exit(0);
}

ok(wait_for(5, sub { (backends()->{xx}{in_flight} // 0) == 1 }),
   'the stream is under way through xx');
my @old = workers();

# xx leaves; a reload more, when its state was freed; then ww comes
reload('yy');
reload('yy');
reload('yy', 'ww');

ok(! -e $out, 'the stream still under way after three reloads');

waitpid $pid, 0;
my ($st) = split /\n/, $t->read_file('stream.out');
is($st, 200, 'the stream ran to its end through the old worker');

# the old worker gone, what it wrote stayed in xx's state
ok(wait_for(10, sub { !grep { -e "/proc/$_" } @old }),
   'the old worker exited');
my $ww = backends()->{ww};
is($ww->{requests}, 0, 'ww, added since, served no request');
is($ww->{tokens}{prompt}, 0, 'nor has the old stream\'s tokens');
is($ww->{responses}{'2xx'}, 0, 'nor its answer');
is($ww->{in_flight}, 0, 'nor anything in flight');

unlike($t->error_log, qr/freed the state of/,
       'xx\'s state kept while a worker might use it');

# the next reload, no worker of xx's configuration left, frees it
reload('yy', 'ww');
like($t->error_log, qr/freed the state of 1 removed backends/,
     'freed at the next reload');

$t->done;
