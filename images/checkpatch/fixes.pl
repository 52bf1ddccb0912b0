#!/usr/bin/perl
# The three changes llbgen's checkpatch image makes to the kernel's scripts/checkpatch.pl:
#
#   perl fixes.pl path/to/checkpatch.pl
#
# Each edit is a regular expression that must match the pinned script exactly once; when one does
# not (a new kernel version moved the code), nothing is written, every edit that failed is named,
# and the exit status is 1, so the image build stops at this step instead of shipping a script
# without the fix. The structure tests (tests.py) prove each edit on a patch.
use strict;
use warnings;

my $path = shift @ARGV or die "usage: fixes.pl CHECKPATCH.PL\n";
open my $in, '<', $path or die "fixes.pl: cannot read $path: $!\n";
my $text = do { local $/; <$in> };
close $in;

my @failed;

# Replaces the one match of $pattern by what $replace returns (it sees the match's groups).
sub edit {
    my ($name, $pattern, $replace) = @_;
    my $count = () = $text =~ /$pattern/g;
    if ($count != 1) {
        push @failed, "$name: its pattern matches $count times in $path, not once";
        return;
    }
    $text =~ s/$pattern/$replace->()/e;
    print "fixes.pl: applied: $name\n";
}

# 1. A .c file's licence line may be a C99 comment: the kernel's own rule for .c files is
#    "// SPDX-License-Identifier: ...", which the C99_COMMENTS error (C99_COMMENT_TOLERANCE
#    ignored) would otherwise report on line 1 of every new .c file. Only that exact line is exempt.
edit(
    'the SPDX line of a .c file is not a C99_COMMENTS error',
    qr/^(\s*)if \(\$line =~ m\{\/\/\}\) \{\n(?=\s*if \(ERROR\("C99_COMMENTS",)/m,
    sub {
        my $indent = $1;
        return "${indent}my \$c_spdx_line = \$realfile =~ /\\.c\$/ && \$realline == \$checklicenseline &&\n"
            . "${indent}    \$rawline =~ m{^\\+// SPDX-License-Identifier: };\n"
            . "${indent}if (\$line =~ m{//} && !\$c_spdx_line) {\n";
    },
);

# 2. Co-authored-by: (GitHub's trailer for commits with several authors) is a signature tag, not
#    a BAD_SIGN_OFF "Non-standard signature".
edit(
    'Co-authored-by: is a known signature tag',
    qr/^(\s*)Co-developed-by:\|\n(?=(?:.*\n){0,12}?\s*Cc:\n\)\};)/m,
    sub { "$1Co-developed-by:|\n$1Co-authored-by:|\n" },
);

# 3. _Static_assert is C11's keyword, not a CamelCase identifier of ours.
edit(
    '_Static_assert is not CAMELCASE',
    qr/^(\s*)if \(\$var !~ \/\^\$Constant\$\/ &&\n(?=\s*\$var =~ \/\[A-Z\]\[a-z\]\|\[a-z\]\[A-Z\]\/ &&)/m,
    sub { "$1if (\$var !~ /^\$Constant\$/ && \$var ne '_Static_assert' &&\n" },
);

if (@failed) {
    print STDERR "fixes.pl: error: $_\n" for @failed;
    print STDERR "fixes.pl: $path left unchanged: write the failed edits again for this version of checkpatch.pl\n";
    exit 1;
}
open my $out, '>', $path or die "fixes.pl: cannot write $path: $!\n";
print {$out} $text;
close $out or die "fixes.pl: cannot write $path: $!\n";
