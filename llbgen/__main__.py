from llbgen.cli import main

raise SystemExit(main())
